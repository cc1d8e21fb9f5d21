"""JSON files: one layout, standard JSON (NaN as null), written whole."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segdistill.jsonfiles import json_text, write_json


def _strict_load(text: str) -> object:
    """json.loads that refuses NaN / Infinity, as strict readers (browsers, jq) do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_turns_nan_into_null_and_arrays_into_lists(tmp_path):
    content = {
        "miou": float("nan"),
        "iou": np.array([0.5, np.nan]),
        "counts": torch.tensor([1, 2]),
        "nested": {"ece": np.float32(0.25), "names": ("a", "b")},
    }
    path = tmp_path / "out" / "metrics.json"
    write_json(path, content)
    loaded = _strict_load(path.read_text())
    assert loaded == {
        "miou": None,
        "iou": [0.5, None],
        "counts": [1, 2],
        "nested": {"ece": 0.25, "names": ["a", "b"]},
    }
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left


def test_json_text_keeps_number_lists_on_one_line_and_refuses_nan():
    text = json_text({"curve": [0.1, 0.2, 0.3], "rows": [{"a": 1}]})
    assert '"curve": [0.1, 0.2, 0.3]' in text.splitlines()[1]
    assert json.loads(text) == {"curve": [0.1, 0.2, 0.3], "rows": [{"a": 1}]}
    with pytest.raises(ValueError):
        json_text({"x": math.nan})


def test_write_json_keeps_the_old_file_when_the_content_cannot_be_written(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"miou": 0.5})
    with pytest.raises(ValueError):
        write_json(path, {"ratio": math.inf})  # Infinity is not JSON and is no metric value
    assert _strict_load(path.read_text()) == {"miou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
