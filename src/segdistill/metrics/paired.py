"""Pixel-wise agreement between a student's and a teacher's uncertainty maps.

Holder & Shafique Fig. 3 plots, for every test pixel, the student's uncertainty against
the teacher's and colours it by whether the student's label is right. Here that becomes a
streaming Pearson correlation and two 2D histograms (correct / wrong pixels), all with a
fixed-size state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from segdistill.data.labels import IGNORE_INDEX
from segdistill.metrics.ranking import bin_edges, bin_indices
from segdistill.metrics.state import StreamingMetric, to_json


def pearson_from_sums(sums: np.ndarray, constant: bool = False) -> float:
    """Pearson r from [n, sx, sy, sxx, syy, sxy]; NaN when either variable is constant.

    constant: whether one of them is known to be constant (its min equals its max): its
    variance from the sums is then round-off (1e-17, either sign), not 0.
    """
    n, sx, sy, sxx, syy, sxy = sums
    if n == 0 or constant:
        return float("nan")
    cov = sxy / n - (sx / n) * (sy / n)
    var_x = sxx / n - (sx / n) ** 2
    var_y = syy / n - (sy / n) ** 2
    if var_x <= 0 or var_y <= 0:
        return float("nan")
    return float(cov / np.sqrt(var_x * var_y))


class PairedUncertaintyStats(StreamingMetric):
    """Streaming Pearson correlation and 2D histograms of two uncertainty maps.

    student_range, teacher_range: histogram ranges (values outside are clipped into the end
    bins and counted); num_bins: bins per axis. Only pixels with a ground truth other than
    `ignore_index` count. The correlation uses the raw (unclipped) values.

    State: sums [6] (float64), hist [2, num_bins, num_bins] (int64), and the extremes of
    both maps (float64 [2] each), which tell a constant map.
    """

    def __init__(
        self,
        *,
        student_range: tuple[float, float] = (0.0, 1.0),
        teacher_range: tuple[float, float] = (0.0, 1.0),
        num_bins: int = 100,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.student_range = (float(student_range[0]), float(student_range[1]))
        self.teacher_range = (float(teacher_range[0]), float(teacher_range[1]))
        self.num_bins = num_bins
        self.ignore_index = ignore_index
        # n, sum x, sum y, sum x^2, sum y^2, sum xy with x = student, y = teacher, both
        # shifted by the middle of their range so the float64 sums of squares do not lose
        # the (small) variance to the (large) squared mean.
        self._register("sums", torch.zeros(6, dtype=torch.float64), "sum")
        # [correct / wrong, teacher bin, student bin]
        self._register("hist", torch.zeros(2, num_bins, num_bins, dtype=torch.int64), "sum")
        self._register("num_clipped", torch.zeros((), dtype=torch.int64), "sum")
        # [student, teacher] minima and maxima of the raw values.
        self._register("mins", torch.full((2,), float("inf"), dtype=torch.float64), "min")
        self._register("maxs", torch.full((2,), float("-inf"), dtype=torch.float64), "max")

    def _config(self) -> dict[str, Any]:
        return {
            "student_range": self.student_range,
            "teacher_range": self.teacher_range,
            "num_bins": self.num_bins,
            "ignore_index": self.ignore_index,
        }

    @torch.no_grad()
    def update(self, student: Tensor, teacher: Tensor, prediction: Tensor, target: Tensor) -> None:
        """student, teacher: [B, 1, H, W] uncertainty maps; prediction: [B, H, W] the
        student's labels; target: [B, H, W] ground truth with `ignore_index`."""
        if student.shape != teacher.shape or student.shape[1] != 1:
            raise ValueError(
                f"student and teacher maps must both be [B, 1, H, W], got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        valid = target != self.ignore_index
        x = student.detach()[:, 0][valid].to(torch.float64)
        y = teacher.detach()[:, 0][valid].to(torch.float64)
        wrong = (prediction[valid] != target[valid]).long()
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise ValueError("uncertainty maps hold NaN or inf at evaluated pixels")
        dx = x - sum(self.student_range) / 2
        dy = y - sum(self.teacher_range) / 2
        self._state["sums"] += torch.stack(
            [
                torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                dx.sum(),
                dy.sum(),
                (dx * dx).sum(),
                (dy * dy).sum(),
                (dx * dy).sum(),
            ]
        ).cpu()
        nb = self.num_bins
        index = (wrong * nb + bin_indices(y, self.teacher_range, nb)) * nb + bin_indices(
            x, self.student_range, nb
        )
        self._state["hist"] += torch.bincount(index, minlength=2 * nb * nb).cpu().view(2, nb, nb)
        (x_lo, x_hi), (y_lo, y_hi) = self.student_range, self.teacher_range
        clipped = ((x < x_lo) | (x > x_hi)).sum() + ((y < y_lo) | (y > y_hi)).sum()
        self._state["num_clipped"] += clipped.cpu()
        if x.numel():
            mins = torch.stack([x.min(), y.min()]).cpu()
            maxs = torch.stack([x.max(), y.max()]).cpu()
            self._state["mins"] = torch.minimum(self._state["mins"], mins)
            self._state["maxs"] = torch.maximum(self._state["maxs"], maxs)

    def compute(self) -> dict[str, Any]:
        """{"pearson", "num_pixels", "num_clipped", "hist2d": {"teacher_edges",
        "student_edges", "correct", "wrong"}}; hist2d counts are [teacher bin][student bin]
        (teacher on the x axis as in Holder & Shafique Fig. 3). None when undefined."""
        sums = self._state["sums"].numpy()
        hist = self._state["hist"].numpy()
        constant = bool((self._state["mins"] == self._state["maxs"]).any())
        return to_json(
            {
                "pearson": pearson_from_sums(sums, constant),
                "num_pixels": int(sums[0]),
                "num_clipped": int(self._state["num_clipped"]),
                "hist2d": {
                    "teacher_edges": bin_edges(self.teacher_range, self.num_bins),
                    "student_edges": bin_edges(self.student_range, self.num_bins),
                    "correct": hist[0],
                    "wrong": hist[1],
                },
            }
        )
