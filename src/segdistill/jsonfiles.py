"""JSON files the toolkit writes (metrics, results, manifests, markers, summaries): one
layout, valid JSON, written atomically.

`json_text` keeps a metrics file readable: nested objects indented, lists of numbers on
one line instead of one line per histogram bin. `write_json` turns NaN (an undefined
metric) into null first (`metrics.state.to_json`), so every file is standard JSON that
any reader accepts, and writes through `atomic.atomic_write_text`, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segdistill.atomic import atomic_write_text
from segdistill.metrics.state import to_json


def json_text(value: Any, indent: int = 0) -> str:
    """JSON with nested objects indented and lists of numbers / strings on one line.
    NaN is refused (ValueError): `write_json` turns it into null first."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {json_text(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + json_text(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, allow_nan=False)


def write_json(path: str | Path, content: dict[str, Any]) -> None:
    """Create or replace `path` with `content` as JSON (`json_text`; NaN as null, arrays
    and tensors as lists), all or nothing."""
    atomic_write_text(path, json_text(to_json(content)) + "\n")
