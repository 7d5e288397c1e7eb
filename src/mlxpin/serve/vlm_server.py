"""``python -m mlxpin.serve.vlm_server --unix-socket PATH [mlx_vlm.server options]``

Runs ``mlx_vlm.server`` unchanged -- its own argument parser, environment set-up and
FastAPI app -- except that uvicorn serves the app on a 0600 Unix socket in mlxpin's 0700
directory instead of a TCP port (mlx_vlm.server has no socket flag, and its default host is
0.0.0.0). Its CLI ends in ``uvicorn.run(app, host=..., port=..., ...)``; this replaces that
call for the one process, handing uvicorn the socket as ``fd`` and a keep-alive longer
than the gateway's (uvicorn's 5 s would drop the gateway's pooled connections), and the
server's ``--log-level`` (mlx_vlm.server sets only its own logger's: uvicorn would log
every request at INFO, whatever the manifest's ``log_level`` says).
"""

from __future__ import annotations

import sys
from typing import Any

from mlxpin.serve.uds_server import bind_private_socket, split_socket

KEEP_ALIVE_S = 60  # above the gateway connector's 30 s


def main(argv: list[str]) -> None:
    path, rest = split_socket(argv)
    sock = bind_private_socket(path)
    import mlx_vlm.server.cli
    import uvicorn

    cli: Any = mlx_vlm.server.cli
    run = uvicorn.run

    def run_on_socket(app: Any, **options: Any) -> None:
        for name in ("host", "port", "reload", "uds"):
            options.pop(name, None)
        options.setdefault("log_level", log_level(rest))
        run(app, fd=sock.fileno(), timeout_keep_alive=KEEP_ALIVE_S, **options)

    uvicorn.run = run_on_socket
    sys.argv = ["mlx_vlm.server", *rest]
    cli.main()


def log_level(argv: list[str]) -> str:
    """uvicorn's name for the level mlx_vlm.server's ``--log-level`` gives (its default:
    INFO); mlx_vlm.server's own parser refuses any other value."""
    at = len(argv) - 1 - argv[::-1].index("--log-level") if "--log-level" in argv else -1
    given = argv[at + 1] if 0 <= at < len(argv) - 1 else "INFO"
    return given.lower()


if __name__ == "__main__":
    main(sys.argv[1:])
