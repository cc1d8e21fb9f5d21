"""Ranking metrics (ROC, precision-recall, risk-coverage) from counts per score level.

Misclassification detection (a wrong pixel is the positive), OOD image detection (an OOD
image is the positive) and pixel anomaly detection (an anomalous pixel is the positive)
reduce to the same input: for each score level, in ascending score order, the number of
positives and of negatives with that score; a higher score means "more likely positive".
A level is either a distinct score value (exact metrics over a few hundred image scores)
or a histogram bin (streaming metrics over millions of pixels).

Ties within one level:

- AUROC: trapezoid rule, so a positive/negative pair in the same level counts 1/2 (the
  Mann-Whitney statistic; equal to sklearn's `roc_auc_score` for exact levels). A constant
  score therefore gives 0.5.
- exact levels (`interpolate=False`): AP and FPR at 95 % TPR as sklearn's
  `average_precision_score` and `roc_curve` compute them: a level is one threshold (step).
- bins (`interpolate=True`): the order inside a bin is unknown, so its positives and
  negatives are taken as evenly interleaved: the bin's b positives and f negatives form b
  groups of f / b negatives followed by one positive. AP is then the step AP of that
  sequence, summed over the bin in closed form with the digamma function; FPR at the TPR
  level is read off the straight ROC segment of the bin. A bin that holds one sample is
  exact, and a single bin holding everything gives sklearn's result for tied scores (AP =
  positive rate), so the difference to the exact metric comes only from bins holding
  both positives and negatives and is bounded by their share of the samples.

A metric is NaN (None in JSON) when it is undefined: AUROC, AP and FPR95 without any
positive or without any negative; AURC without any sample.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import digamma
from torch import Tensor


def bin_indices(values: Tensor, value_range: tuple[float, float], num_bins: int) -> Tensor:
    """Index of the equal-width bin of each value; values outside the range are clipped.

    values: any shape, finite. Returns int64 of the same shape in [0, num_bins). Bin k holds
    [lo + k w, lo + (k + 1) w) with w = (hi - lo) / num_bins; `hi` itself lands in the last
    bin. Computed in float64 so that a float32 value is never put on the wrong side of an
    edge by rounding.
    """
    lo, hi = value_range
    scaled = (values.to(torch.float64) - lo) * (num_bins / (hi - lo))
    return scaled.floor_().clamp_(0, num_bins - 1).long()


def bin_edges(value_range: tuple[float, float], num_bins: int) -> np.ndarray:
    """[num_bins + 1] float64 edges of the bins of `bin_indices`."""
    return np.linspace(value_range[0], value_range[1], num_bins + 1)


def downsample(hist: np.ndarray, num_bins: int) -> np.ndarray:
    """Sum groups of neighbouring bins of a [K] histogram into [num_bins]; K % num_bins == 0."""
    return hist.reshape(num_bins, -1).sum(axis=1)


def _cumulative(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True / false positive counts [K + 1] at thresholds from above the highest level down
    to below the lowest (index 0 flags nothing)."""
    tp = np.concatenate([[0.0], np.cumsum(pos[::-1], dtype=np.float64)])
    fp = np.concatenate([[0.0], np.cumsum(neg[::-1], dtype=np.float64)])
    return tp, fp


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr [K + 1], tpr [K + 1]) from (0, 0) to (1, 1) as the threshold goes
    down through the K levels. pos, neg: [K] counts per level, ascending score."""
    tp, fp = _cumulative(pos, neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp / fp[-1], tp / tp[-1]


def ranking_metrics(
    pos: np.ndarray, neg: np.ndarray, *, interpolate: bool, tpr_level: float = 0.95
) -> dict[str, float]:
    """AUROC, AP (area under the precision-recall curve) and FPR at `tpr_level` TPR.

    pos, neg: [K] counts of positives / negatives per score level, ascending score.
    interpolate: False for exact levels (one distinct score each), True for histogram bins
    (see the module docstring). Returns {"auroc", "aupr", "fpr95"}, NaN when undefined.
    """
    tp, fp = _cumulative(pos, neg)
    num_pos, num_neg = tp[-1], fp[-1]
    if num_pos == 0 or num_neg == 0:
        return {"auroc": float("nan"), "aupr": float("nan"), "fpr95": float("nan")}
    tpr, fpr = tp / num_pos, fp / num_neg
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

    gain = np.diff(tp)  # positives per level, descending score
    total = gain + np.diff(fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        if interpolate:
            # j-th positive of a bin (j = 1..b) after a + j positives among c + j d / b
            # samples: precision (a + j) / (c + j s), s = d / b, summed over j.
            a, b, c = tp[:-1], gain, tp[:-1] + fp[:-1]
            s = total / np.where(gain > 0, gain, 1)
            precision_sum = b / s + (a * s - c) / s**2 * _harmonic_gap(c / s, b)
        else:
            precision_sum = gain * tp[1:] / (tp[1:] + fp[1:])
    aupr = float(np.sum(np.where(gain > 0, precision_sum, 0.0)) / num_pos)

    k = int(np.argmax(tpr >= tpr_level))  # first point reaching the level; tpr[-1] = 1
    if interpolate and k > 0:
        share = (tpr_level - tpr[k - 1]) / (tpr[k] - tpr[k - 1])
        fpr95 = float(fpr[k - 1] + share * (fpr[k] - fpr[k - 1]))
    else:
        fpr95 = float(fpr[k])
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}


def _harmonic_gap(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """sum_{j=1..n} 1 / (x + j) = digamma(x + n + 1) - digamma(x + 1), for x >= 0.

    For large x the two digammas are nearly equal; there the difference is taken from the
    asymptotic series ln y - 1 / (2 y) - 1 / (12 y^2) term by term without cancellation
    (truncation error below 1e-13 relative for x >= 1000).
    """
    y0, y1 = x + 1, x + n + 1
    series = np.log1p(n / y0) + n / (2 * y0 * y1) + n * (y0 + y1) / (12 * y0**2 * y1**2)
    small = np.where(x < 1000, x, 0.0)
    return np.where(x < 1000, digamma(small + n + 1) - digamma(small + 1), series)


def risk_coverage_metrics(counts: np.ndarray, errors: np.ndarray) -> dict[str, float]:
    """AURC and E-AURC of the risk-coverage curve (Geifman & El-Yaniv).

    counts, errors: [K] samples and wrong samples per uncertainty level, ascending
    uncertainty. Samples are kept most certain first; at coverage c (samples kept) the risk
    is errors(c) / c and AURC = 1/N int_0^N risk(c) dc. errors(c) is linear across a level
    (samples in a bin uniformly mixed), so each level integrates in closed form:
    int (E0 + r (c - c0)) / c dc = (E0 - r c0) ln(c1 / c0) + r (c1 - c0). With one sample
    per level this differs from the discrete mean of the N risks by O(log N / N).
    E-AURC subtracts the AURC of an oracle that ranks all errors last, computed the same
    way, so it is 0 for a perfect ranking whatever the error rate.
    """
    counts = counts.astype(np.float64)
    errors = errors.astype(np.float64)
    total = counts.sum()
    if total == 0:
        return {"aurc": float("nan"), "eaurc": float("nan")}
    num_err = errors.sum()
    return {
        "aurc": _aurc(counts, errors, total),
        "eaurc": _aurc(counts, errors, total)
        - _aurc(np.array([total - num_err, num_err]), np.array([0.0, num_err]), total),
    }


def _aurc(counts: np.ndarray, errors: np.ndarray, total: float) -> float:
    keep = counts > 0
    counts, errors = counts[keep], errors[keep]
    c1 = np.cumsum(counts)
    c0 = c1 - counts
    e0 = np.cumsum(errors) - errors
    rate = errors / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(c0 > 0, (e0 - rate * c0) * np.log(c1 / np.where(c0 > 0, c0, 1)), 0)
    return float(np.sum(log_term + rate * counts) / total)
