"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml


class SegdistillError(Exception):
    """Base class: the message names the file, key or value that is wrong."""

    def __init__(self, message: str = "") -> None:
        super().__init__(_without_worker_traceback(message, type(self)))


def _without_worker_traceback(message: str, error_type: type) -> str:
    """The original message of an error raised in a DataLoader worker process.

    PyTorch re-raises such an error in the main process as `error_type(text)`, where text
    is "Caught DataError in DataLoader worker process 1. Original Traceback ...", the
    worker's whole traceback, ending in "segdistill.errors.DataError: <message>". The user
    should see the one line that names the file, as without workers.
    """
    marker = f"{error_type.__module__}.{error_type.__name__}: "
    wrapped = message.startswith(f"Caught {error_type.__name__} in DataLoader worker process")
    if not wrapped or "\nOriginal Traceback" not in message or marker not in message:
        return message
    return message.rsplit(marker, 1)[1].strip()


class DataError(SegdistillError):
    """A data set file or folder is missing, corrupt or inconsistent."""


class ConfigError(SegdistillError):
    """A config key or value is unknown or invalid."""


class CheckpointError(SegdistillError):
    """A checkpoint is missing, corrupt or belongs to another architecture."""


class OutputError(SegdistillError):
    """A file cannot be written where it was asked (no permission, a full disk, ...)."""


class TrainingError(SegdistillError):
    """Training cannot go on (e.g. a NaN loss)."""


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """ "; did you mean 'x'?" for the choice closest to `value`, or "" when none is close
    (the end of an "unknown name" message)."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def preview_list(items: Sequence[object], limit: int = 10) -> str:
    """'a, b, c' listing at most `limit` items, then how many more (for messages)."""
    shown = ", ".join(str(item) for item in items[:limit])
    more = len(items) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown


def read_text(path: Path, what: str, error: type[SegdistillError]) -> str:
    """The text of the file at `path`, else `error` naming it: missing, a folder, not
    readable, or not text (a checkpoint or an image given where a YAML file belongs).
    `what` says what the file should be, e.g. "config file"."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; give the file") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file, so not a {what}") from None
    except OSError as failure:
        raise error(f"{what} {path}: cannot read it ({failure.strerror or failure})") from None


def read_yaml(path: Path, what: str, error: type[SegdistillError]) -> Any:
    """The YAML document in the file at `path` (`read_text`'s errors), else `error` naming
    the file when it is not valid YAML."""
    text = read_text(path, what, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as failure:
        raise error(f"{path}: not valid YAML ({yaml_problem(failure)})") from None


def yaml_problem(failure: yaml.YAMLError) -> str:
    """One line of a YAML parser's error: what it found and where (PyYAML's own text spans
    several lines and quotes the input with a caret under it)."""
    problem = getattr(failure, "problem", None)
    mark = getattr(failure, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(failure).split())
    context = getattr(failure, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"{context}: {problem} at {where}" if context else f"{problem} at {where}"


def short_reason(error: BaseException, limit: int = 200) -> str:
    """The "type: what went wrong" of a reader's error, one line, for a message that names the
    file. Of torch.load's refusal only what it found: its preamble advises weights_only=False,
    which would run the file's code."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        marker = "WeightsUnpickler error:"
        at = next((i for i, line in enumerate(lines) if marker in line), None)
        found = "" if at is None else lines[at].split(marker, 1)[1].strip()
        if at is not None and not found and at + 1 < len(lines):
            found = lines[at + 1]
        lines = [f"not plain tensors{': ' + found if found else ''}"]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]
