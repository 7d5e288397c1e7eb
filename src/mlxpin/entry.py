"""The `mlxpin` executable: the argparse command line (`mlxpin.cli.app`), stdlib only."""

from __future__ import annotations

import gc
import os
import sys


def _closed_stdio() -> None:
    """Give a closed stdin, stdout or stderr (`mlxpin fetch 2>&-`) /dev/null instead:
    Python leaves ``sys.stderr`` None, and the next file opened would take fd 2."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


def main() -> None:
    _closed_stdio()
    argv = sys.argv[1:]
    if argv[:1] == ["_host"]:  # run over ssh by another host (see mlxpin.cli.hostagent)
        from mlxpin.cli.hostagent import main as host_agent

        raise SystemExit(host_agent(argv[1:]))
    from mlxpin.cli.app import main as cli

    try:
        code = cli(argv)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: a normal end, as for `cat`
        # imported here: `--version` and `--help` must not pay for the rendering layer
        from mlxpin.cli.output import PIPE_CLOSED, discard_stdout

        discard_stdout()
        code = PIPE_CLOSED
    # The verb is done: skip the interpreter's last collections, which walk every object
    # the imports made (~5 % of `status`); what is still open is closed by reference
    # counting as the interpreter clears its modules, as before.
    gc.freeze()
    raise SystemExit(code)
