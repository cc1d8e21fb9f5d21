"""Checks that a file or folder can be written where the user asked, made before the work
that fills it: an evaluation or an export should not end in an OSError traceback because
its --out names a folder, or a file sits where a folder must be made."""

from __future__ import annotations

from pathlib import Path

from segdistill.errors import ConfigError


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing parent of `path` that is not a folder (no folder can be made
    under it), else None."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_folder(path: Path, what: str) -> None:
    """ConfigError unless a folder can be at `path` (it is one, or can be made); `what`
    names the setting, e.g. "--out"."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"{what} {path}: {blocker} is a file, so no folder can be made there")


def check_output_file(path: Path, what: str) -> None:
    """ConfigError unless a file can be written at `path` (new, or a file to replace)."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"{what} {path}: {blocker} is a file, so no folder can be made there")
