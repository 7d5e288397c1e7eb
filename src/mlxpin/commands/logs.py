"""`mlxpin logs NAME`: a model server's own output, as `launch` and `serve` write it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.errors import NoInputError, Run
from mlxpin.plan.launch import model_log
from mlxpin.util.logtail import read_from, tail

__all__ = ["show_log"]

FOLLOW_POLL_S = 0.25


def show_log(
    settings: Settings,
    name: str,
    lines: int,
    write: Callable[[bytes], object],
    *,
    follow: bool = False,
) -> Path:
    """Write the last ``lines`` of ``name``'s log, then (``follow``) what is appended,
    across rotations, until interrupted. NoInputError (66) when it has none yet."""
    path = model_log(settings.state_dir, name)
    try:
        data, offset = tail(path, lines)
    except FileNotFoundError:
        raise NoInputError(
            f"{name}: no model log at {path}",
            f"it is written once {Run.of('launch', name)} or {Run.of('serve')} starts the "
            "model; name the model as the manifest does (not its api_label)",
        ) from None
    write(data)
    while follow:
        time.sleep(FOLLOW_POLL_S)
        data, offset = read_from(path, offset)
        if data:
            write(data)
    return path
