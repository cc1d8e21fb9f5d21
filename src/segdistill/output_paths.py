"""Checks that a file or folder can be written where the user asked, made before the work
that fills it: an evaluation or an export should not end in an OSError traceback because
its --out names a folder, or a file sits where a folder must be made. And the locks of
outputs that several processes could write: a run directory is held by one run
(`held_folder`); a teacher cache or an ensemble's manifest is written in turns
(`waiting_lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from segdistill.errors import ConfigError

LOCK_FILE = ".lock"  # in a folder being written: who writes there


def _nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its nearest existing parent."""
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def _check_writable(path: Path, what: str, folder: Path) -> None:
    """ConfigError unless the nearest existing folder of `folder` (where `path` goes)
    takes new entries: a read-only mount or a folder without write permission would
    otherwise end the work in a traceback, after it was done. Tried with a temporary
    file, since permission bits say nothing to root or of a read-only mount."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, so no folder can be made there")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(
            f"{what} {path}: cannot write in {existing} ({error.strerror or error})"
        ) from None


def check_output_folder(path: Path, what: str) -> None:
    """ConfigError unless a folder can be at `path` (it is one, or can be made) and be
    written in; `what` names the setting, e.g. "--out"."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder")
    _check_writable(path, what, path)


def check_output_file(path: Path, what: str) -> None:
    """ConfigError unless a file can be written at `path` (new, or a file to replace)."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    _check_writable(path, what, path.parent)


def make_folder(folder: Path) -> None:
    """`folder` and its parents made, or a ConfigError naming it (for folders that come
    from a config file, which no argument check has seen)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot make the folder {folder}: {error.strerror or error}") from None


@contextlib.contextmanager
def held_folder(folder: Path) -> Iterator[None]:
    """Hold FOLDER/.lock while a run writes in `folder` (made if need be): a second run
    into the same folder is refused, naming the process that holds it, instead of both
    writing the same files. The lock goes with the process, however it ends; the folders
    made here that the run left empty (e.g. its config was refused) are removed again, up
    to the first that was there."""
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    make_folder(folder)
    try:
        with _lock(folder):
            yield
    finally:
        if made and [path.name for path in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            for path in made:  # the deepest first, while nothing else is in them
                if any(path.iterdir()):
                    break
                path.rmdir()


def folder_user(folder: Path) -> str | None:
    """Who holds `folder` (`held_folder`), e.g. "pid 4242 on host"; None when no live
    process does (a lock file left by an ended run holds nothing)."""
    path = folder / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(lock)
    return None


def _holder(lock: TextIO) -> str:
    """Who holds an open lock file, as its holder wrote it (`_lock`)."""
    lock.seek(0)
    return lock.read().strip() or "another process"


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    with open(folder / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
        except BlockingIOError:
            raise ConfigError(
                f"{folder} is in use by another run ({_holder(lock)}, holding "
                f"{folder / LOCK_FILE}): wait for it to end, or choose another folder"
            ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {platform.node()}")
        lock.flush()
        yield


@contextlib.contextmanager
def waiting_lock(lock_path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive lock on the file `lock_path` (made, with its
    folder, if need be): for writers that take turns (the builds of one teacher cache,
    the members of one ensemble writing its manifest)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
