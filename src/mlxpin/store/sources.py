"""Where a pin's bytes come from: the ByteSource seam, and the local-path source.

fetch asks a source for a file's bytes from an offset and verifies them itself; a source
only says how to read, when a failure is worth a retry, and how to word giving up. The Hub
source lives in ``mlxpin.hub`` so that this floor never imports huggingface_hub.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from mlxpin.errors import IntegrityError, MlxpinError, Run
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.util.hashing import CHUNK


class ByteSource(Protocol):
    def open(
        self, file: LockedFile, offset: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]: ...

    def interrupted(self, exc: Exception) -> bool: ...

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError: ...

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError: ...

    def origin(self) -> str | None:
        """Where the bytes came from, for `status`: hub, mirror, bundle or path (None:
        keep what the stamp recorded)."""
        ...


class LocalSourceBytes:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name

    @contextlib.contextmanager
    def open(self, file: LockedFile, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        try:
            handle = (self.root / file.path).open("rb")
        except OSError as exc:
            raise self._changed(file, f"cannot be read: {exc.strerror}") from None
        with handle:
            handle.seek(offset)

            def chunks() -> Iterator[bytes]:
                while chunk := handle.read(CHUNK):
                    yield chunk

            yield offset, chunks()

    def interrupted(self, exc: Exception) -> bool:
        return False

    def origin(self) -> str | None:
        return "path"

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError:
        return self._changed(file, "the local file is shorter than locked")

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError:
        return self._changed(file, f"the local file {problem}")

    def _changed(self, file: LockedFile, problem: str) -> IntegrityError:
        return IntegrityError(
            self.name,
            file.path,
            problem,
            hint=f"{self.root / file.path} changed since it was locked; restore it, or if the "
            f"change is intended, run {Run.of('lock', '--update', self.name)}",
        )
