"""Where each metric of a split lies in metrics.json, its column header and which way it is
better: one table that the printed summary (`evaluate.format_summary`), the report's
tables and an experiment's checks and tables (`pipeline.checks.METRICS`) all read, so a
metric has one header everywhere.

A model's metrics.json (and each model of an experiment's results.json) holds
`splits[split]`, the dict `SegmentationEvaluator.compute` returns; `path` is the keys
into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# Which way a metric is better: "high", "low", or None for a measure of no better side
# (a mean uncertainty is good when it matches the teacher's, not when it is small).
Better = Literal["high", "low"] | None


@dataclass(frozen=True)
class SplitMetric:
    """header: the column header; path: keys into `splits[split]`; better: `Better`."""

    header: str
    path: tuple[str, ...]
    better: Better


SPLIT_METRICS: dict[str, SplitMetric] = {
    "miou": SplitMetric("mIoU", ("segmentation", "miou"), "high"),
    "per_class_iou": SplitMetric("IoU per class", ("segmentation", "iou"), "high"),
    "pixel_accuracy": SplitMetric("pixel acc", ("segmentation", "pixel_accuracy"), "high"),
    "mean_class_accuracy": SplitMetric(
        "class acc", ("segmentation", "mean_class_accuracy"), "high"
    ),
    "ece": SplitMetric("ECE", ("calibration", "ece"), "low"),
    "misclassification_auroc": SplitMetric(
        "misc. AUROC", ("uncertainty", "misclassification", "auroc"), "high"
    ),
    "misclassification_aupr": SplitMetric(
        "misc. AUPR", ("uncertainty", "misclassification", "aupr"), "high"
    ),
    "misclassification_fpr95": SplitMetric(
        "misc. FPR95", ("uncertainty", "misclassification", "fpr95"), "low"
    ),
    "aurc": SplitMetric("AURC", ("uncertainty", "aurc"), "low"),
    "eaurc": SplitMetric("E-AURC", ("uncertainty", "eaurc"), "low"),
    "pavpu": SplitMetric("pAvPU max", ("uncertainty", "pavpu", "max"), "high"),
    "pixel_mean_uncertainty": SplitMetric("mean unc.", ("uncertainty", "pixel_mean"), None),
    "class_mean_uncertainty": SplitMetric("class-mean unc.", ("uncertainty", "class_mean"), None),
    "per_class_mean_uncertainty": SplitMetric(
        "unc. per class", ("uncertainty", "per_class_mean"), None
    ),
}


def dig(value: Any, *keys: str | int) -> Any:
    """value[k0][k1]...; None when any level is missing or None (results.json models)."""
    for key in keys:
        if value is None:
            return None
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def split_value(model: dict[str, Any], split: str, name: str) -> Any:
    """The SPLIT_METRICS metric `name` of a metrics.json model on `split`; None when that
    split or metric was not evaluated."""
    return dig(model, "splits", split, *SPLIT_METRICS[name].path)
