"""Streaming evaluation metrics with fixed-size, mergeable state.

- `SegmentationEvaluator`: IoU / mIoU, accuracy, ECE, and the quality of any per-pixel
  uncertainty map (misclassification AUROC / AUPR / FPR95, AURC, pAvPU, per-class mean
  uncertainty, mIoU vs removed pixels, histograms).
- `PairedUncertaintyStats`: student vs teacher uncertainty, Pearson r and 2D histograms.
- `image_scores`, `ood_metrics`: image-level OOD detection from aggregated uncertainty.
- `AnomalyEvaluator`: pixel-level anomaly detection (AP, AUROC, FPR95).

Every `compute()` returns plain JSON values with None where a metric is undefined.
"""

from segdistill.defaults import AGGREGATORS
from segdistill.metrics.ood import AnomalyEvaluator, image_scores, ood_metrics
from segdistill.metrics.paired import PairedUncertaintyStats
from segdistill.metrics.segmentation import SegmentationEvaluator
from segdistill.metrics.state import StreamingMetric, to_json

__all__ = [
    "AGGREGATORS",
    "AnomalyEvaluator",
    "PairedUncertaintyStats",
    "SegmentationEvaluator",
    "StreamingMetric",
    "image_scores",
    "ood_metrics",
    "to_json",
]
