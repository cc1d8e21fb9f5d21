"""Files written all or nothing: to a temporary file in the same folder, flushed to disk,
then renamed over the target. A crash, a kill or a full disk leaves the previous file
intact, never a truncated one; `remove_unfinished_writes` deletes the temporary files a
killed write left. Imports neither torch nor numpy, so SynthStreets' generator uses it too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from segdistill.errors import OutputError

# The suffix of atomic_write's temporary files (".NAME.PID.RANDOM.tmp").
_UNFINISHED = ".tmp"


def remove_unfinished_writes(folder: Path, recursive: bool = False) -> None:
    """Delete the temporary files that `atomic_write`s killed before their rename left in
    `folder` (and below it with `recursive`). Call it only where nothing is being written."""
    pattern = f".*{_UNFINISHED}"
    for leftover in folder.rglob(pattern) if recursive else folder.glob(pattern):
        if not leftover.is_file():  # e.g. an export's staging folder (export.py)
            continue
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            leftover.unlink()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Create or replace `path` with what `write(file)` writes, all or nothing.

    `write`'s return value is ignored (`file.write` returns a byte count). An OSError (the
    folder cannot be made, no permission, a full disk) becomes an OutputError naming `path`.
    """
    path = Path(path)
    # A unique name opened with "x" (not mkstemp, whose files are private, mode 0600): the
    # file gets the usual permissions of the user's umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_UNFINISHED}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {path} ({error.strerror or error})") from error
        raise
    # Persist the rename itself (the directory entry). Some file systems cannot fsync a
    # directory; the file is complete either way, so that is not an error.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write` of a text file (UTF-8)."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))
