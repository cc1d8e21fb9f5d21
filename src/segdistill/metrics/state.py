"""Fixed-size, mergeable metric state and the JSON conversion every `compute()` uses.

A streaming metric keeps only tensors whose size is fixed at construction (confusion
matrices, bin counts, running sums and extremes), so evaluating 5 or 5000 images costs the
same memory, and two states made on different shards, processes or GPUs combine exactly
with `merge` (counts and sums add, extremes take the min / max).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

Reduction = Literal["sum", "min", "max"]
M = TypeVar("M", bound="StreamingMetric")


class StreamingMetric(ABC):
    """Base class: named state tensors, each with the reduction that merges two of them.

    Subclasses register their state in `__init__` with `_register` and describe their
    hyper-parameters in `_config()`; two metrics merge only when their configs are equal.
    State lives on the CPU: updates reduce their inputs to bin counts on the inputs'
    device and move only those few numbers.
    """

    def __init__(self) -> None:
        self._initial: dict[str, Tensor] = {}
        self._reduction: dict[str, Reduction] = {}
        self._state: dict[str, Tensor] = {}

    def _register(self, name: str, initial: Tensor, reduction: Reduction) -> None:
        self._initial[name] = initial
        self._reduction[name] = reduction
        self._state[name] = initial.clone()

    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """Hyper-parameters that define the meaning of the state (bins, ranges, classes)."""

    @abstractmethod
    def compute(self) -> dict[str, Any]:
        """The metrics of everything seen so far, as plain JSON values (`to_json`)."""

    def reset(self) -> None:
        """Forget everything seen so far."""
        for name, initial in self._initial.items():
            self._state[name] = initial.clone()

    def state_dict(self) -> dict[str, Any]:
        """A copy of the state and the config, e.g. to save a shard's result or to gather it
        from every process (`torch.distributed.all_gather_object`) and `merge` the copies."""
        return {"config": self._config(), **{k: v.clone() for k, v in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state by one from `state_dict` of a metric with the same config."""
        if state.get("config") != self._config():
            raise ValueError(
                f"state was made with config {state.get('config')}, this metric has "
                f"{self._config()}"
            )
        for name, current in self._state.items():
            value = state[name]
            if value.shape != current.shape or value.dtype != current.dtype:
                raise ValueError(
                    f"state {name!r} has shape {tuple(value.shape)} {value.dtype}, expected "
                    f"{tuple(current.shape)} {current.dtype}"
                )
            self._state[name] = value.detach().to("cpu").clone()

    def merge(self: M, other: M) -> M:
        """Add `other`'s state into this one (in place) and return self; the result equals
        one pass over both inputs."""
        if type(other) is not type(self) or other._config() != self._config():
            raise ValueError("can only merge metrics of the same type and config")
        for name, reduction in self._reduction.items():
            a, b = self._state[name], other._state[name]
            if reduction == "sum":
                self._state[name] = a + b
            elif reduction == "min":
                self._state[name] = torch.minimum(a, b)
            else:
                self._state[name] = torch.maximum(a, b)
        return self


def to_json(value: Any) -> Any:
    """Plain Python values for `json.dumps(..., allow_nan=False)`: arrays and tensors become
    lists, numpy scalars Python scalars, and NaN (an undefined metric) becomes None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) else value
    return value
