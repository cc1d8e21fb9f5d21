"""Out-of-distribution detection: whole images (Holder & Shafique 5.3) and pixels.

Image level: each image gets one score aggregated from its pixel uncertainty (min, mean,
median, max, and (median + min) / max, the best aggregator in Holder & Shafique Fig. 6);
`ood_metrics` then separates in-distribution from OOD images, the OOD image being the
positive, exactly (from sorted scores; there are only as many scores as images).

Pixel level: `AnomalyEvaluator` pools all pixels of a data set with an anomaly mask
(1 = anomaly, 0 = normal, `ignore_index` = outside the region of interest), as Fishyscapes
does, and reports AP, AUROC and FPR at 95 % TPR from fine histograms of the anomaly score
(binned ties handled as described in `segdistill.metrics.ranking`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from segdistill.data.labels import IGNORE_INDEX
from segdistill.metrics.ranking import (
    bin_edges,
    bin_indices,
    downsample,
    ranking_metrics,
    roc_curve,
)
from segdistill.metrics.state import StreamingMetric, to_json


@torch.no_grad()
def image_scores(uncertainty: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """One OOD score per image and aggregator from a pixel uncertainty map.

    uncertainty: [B, 1, H, W] (non-negative, higher = less certain); valid: [B, H, W] bool,
    the pixels to aggregate over (all when None). Returns {aggregator: float64 [B]} for
    `AGGREGATORS`; the median of an even count is the mean of the two middle values.
    (median + min) / max is taken as 2 where max is 0: the value of every other constant
    map. An image without a valid pixel gets NaN for every aggregator.
    """
    if uncertainty.dim() != 4 or uncertainty.shape[1] != 1:
        raise ValueError(
            f"uncertainty must be one map per image [B, 1, H, W], not {list(uncertainty.shape)}"
        )
    values = uncertainty.detach()[:, 0].flatten(1).to(torch.float64)  # B = 0 too
    valid = torch.ones_like(values, dtype=torch.bool) if valid is None else valid.flatten(1)
    count = valid.sum(dim=1)
    # Invalid pixels sort to the end, so the first `count` sorted values are the valid ones.
    ascending = torch.where(valid, values, torch.inf).sort(dim=1).values
    lower = ascending.gather(1, ((count - 1) // 2).clamp(min=0)[:, None])[:, 0]
    upper = ascending.gather(1, (count // 2).clamp(max=values.shape[1] - 1)[:, None])[:, 0]
    lowest = ascending[:, 0]
    highest = torch.where(valid, values, -torch.inf).max(dim=1).values
    scores = {
        "min": lowest,
        "mean": torch.where(valid, values, 0.0).sum(dim=1) / count,
        "median": (lower + upper) / 2,
        "max": highest,
    }
    ratio = (scores["median"] + lowest) / highest
    scores["median_plus_min_over_max"] = torch.where(highest == 0, 2.0, ratio)
    return {k: torch.where(count > 0, v, torch.nan) for k, v in scores.items()}


def ood_metrics(
    in_scores: Tensor | np.ndarray | list[float], out_scores: Tensor | np.ndarray | list[float]
) -> dict[str, Any]:
    """AUROC, AUPR, FPR at 95 % TPR (OOD = positive, higher score = more OOD) and the ROC.

    in_scores: [N_in] scores of in-distribution images; out_scores: [N_out] of OOD images.
    Exact: every distinct score is a threshold; ties as sklearn's roc_auc_score,
    average_precision_score and roc_curve. Returns JSON values: {"auroc", "aupr", "fpr95",
    "roc": {"fpr", "tpr", "thresholds"}}; the ROC starts at (0, 0), whose threshold is None
    (nothing flagged), and point k flags the scores >= thresholds[k].
    """
    scores_in, scores_out = (
        # float64 from the start: a list of Python floats would pass through float32.
        torch.as_tensor(s, dtype=torch.float64).detach().cpu().numpy().ravel()
        for s in (in_scores, out_scores)
    )
    if not (np.isfinite(scores_in).all() and np.isfinite(scores_out).all()):
        raise ValueError("OOD scores hold NaN or inf (an image without valid pixels?)")
    levels, index = np.unique(np.concatenate([scores_in, scores_out]), return_inverse=True)
    neg = np.bincount(index[: scores_in.size], minlength=levels.size)
    pos = np.bincount(index[scores_in.size :], minlength=levels.size)
    fpr, tpr = roc_curve(pos, neg)
    return to_json(
        {
            **ranking_metrics(pos, neg, interpolate=False),
            "roc": {"fpr": fpr, "tpr": tpr, "thresholds": [None, *levels[::-1].tolist()]},
        }
    )


class AnomalyEvaluator(StreamingMetric):
    """Pixel-level anomaly detection pooled over a data set (Fishyscapes convention).

    score_range: histogram range of the anomaly score (higher = more anomalous); values
    outside are clipped into the end bins and counted, the exact min / max are kept.
    num_bins: histogram resolution; finer than the segmentation evaluator's by default
    because the state is only 2 x num_bins and anomaly scores often crowd into a narrow
    range. plot_bins: resolution of the histograms in the result (divides num_bins).
    """

    def __init__(
        self,
        *,
        score_range: tuple[float, float] = (0.0, 1.0),
        num_bins: int = 10000,
        ignore_index: int = IGNORE_INDEX,
        plot_bins: int = 100,
    ) -> None:
        super().__init__()
        if not score_range[0] < score_range[1]:
            raise ValueError(f"score_range must be (lo, hi) with lo < hi, got {score_range}")
        if num_bins % plot_bins:
            raise ValueError(f"plot_bins ({plot_bins}) must divide num_bins ({num_bins})")
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.num_bins = num_bins
        self.ignore_index = ignore_index
        self.plot_bins = plot_bins
        # Row 0: normal pixels, row 1: anomalous pixels.
        self._register("hist", torch.zeros(2, num_bins, dtype=torch.int64), "sum")
        self._register("score_min", torch.tensor(float("inf"), dtype=torch.float64), "min")
        self._register("score_max", torch.tensor(float("-inf"), dtype=torch.float64), "max")
        self._register("num_clipped", torch.zeros((), dtype=torch.int64), "sum")

    def _config(self) -> dict[str, Any]:
        return {
            "score_range": self.score_range,
            "num_bins": self.num_bins,
            "ignore_index": self.ignore_index,
            "plot_bins": self.plot_bins,
        }

    @torch.no_grad()
    def update(self, scores: Tensor, mask: Tensor) -> None:
        """scores: [B, 1, H, W] or [B, H, W] anomaly scores; mask: [B, H, W] with 1 =
        anomaly, 0 = normal, `ignore_index` = not evaluated."""
        scores = scores.detach()
        if scores.dim() == 4 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.shape != mask.shape:
            raise ValueError(
                f"scores [B, 1, H, W] or [B, H, W] must match mask [B, H, W], got "
                f"{tuple(scores.shape)} and {tuple(mask.shape)}"
            )
        valid = mask != self.ignore_index
        labels, values = mask[valid].long(), scores[valid].to(torch.float64)
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"mask values must be 0, 1 or ignore_index={self.ignore_index}")
        if not torch.isfinite(values).all():
            raise ValueError("anomaly scores hold NaN or inf at evaluated pixels")
        if values.numel() == 0:
            return
        index = labels * self.num_bins + bin_indices(values, self.score_range, self.num_bins)
        counts = torch.bincount(index, minlength=2 * self.num_bins).cpu()
        st = self._state
        st["hist"] += counts.view(2, self.num_bins)
        st["score_min"] = torch.minimum(st["score_min"], values.min().cpu())
        st["score_max"] = torch.maximum(st["score_max"], values.max().cpu())
        lo, hi = self.score_range
        st["num_clipped"] += ((values < lo) | (values > hi)).sum().cpu()

    def compute(self) -> dict[str, Any]:
        """{"ap", "auroc", "fpr95", "num_anomaly_pixels", "num_normal_pixels", "min", "max",
        "num_clipped", "histograms": {"edges", "normal", "anomaly"}}; None when undefined
        (no anomalous or no normal pixel)."""
        normal, anomaly = self._state["hist"].numpy()
        metrics = ranking_metrics(anomaly, normal, interpolate=True)
        seen = normal.sum() + anomaly.sum() > 0
        edges = bin_edges(self.score_range, self.num_bins)
        return to_json(
            {
                "ap": metrics["aupr"],
                "auroc": metrics["auroc"],
                "fpr95": metrics["fpr95"],
                "num_anomaly_pixels": int(anomaly.sum()),
                "num_normal_pixels": int(normal.sum()),
                "min": float(self._state["score_min"]) if seen else np.nan,
                "max": float(self._state["score_max"]) if seen else np.nan,
                "num_clipped": int(self._state["num_clipped"]),
                "histograms": {
                    "edges": edges[:: self.num_bins // self.plot_bins],
                    "normal": downsample(normal, self.plot_bins),
                    "anomaly": downsample(anomaly, self.plot_bins),
                },
            }
        )
