"""Streaming evaluation of a segmentation and of its per-pixel uncertainty.

`SegmentationEvaluator` accumulates, over the whole data set and in memory that does not
grow with it, everything needed for:

- segmentation: per-class IoU, mIoU, pixel accuracy and mean class accuracy from one
  confusion matrix (Cityscapes convention: a class absent from both the ground truth and
  the prediction has no IoU and is left out of the mean);
- calibration of the class probabilities: ECE over equal-width confidence bins, pixels
  pooled, confidence = max probability;
- uncertainty quality, for any uncertainty map the caller passes (student head, teacher
  pred_std, entropy, mutual information, ...; 1 - max softmax when none is given):
  per-class mean uncertainty of the pixels predicted as each class (DUDES Table 2,
  Holder & Shafique Table 1), misclassification detection with the wrong pixel as
  positive (AUROC, AUPR, FPR at 95 % TPR), the thresholds that flag 50-95 % of the wrong
  pixels as probably wrong and what they cost (`error_operating_points`, for `segdistill
  predict --distrust-above`), AURC / E-AURC, pAvPU over thresholds, the mIoU
  after removing the x % most uncertain pixels of the whole data set (DUDES Fig. 4) and
  histograms of uncertainty for correct and wrong pixels (Holder & Shafique Fig. 4).

Only pixels whose ground truth is not `ignore_index` take part in any result.

The uncertainty metrics are computed from fine histograms (`num_bins` equal-width bins over
`uncertainty_range`) instead of sorting all pixels. The one state that carries them is
`class_counts_by_bin [num_bins, 3, C]`: for every bin and class, the number of pixels with
that ground truth, with that prediction, and with both (true positives). Per-class IoU
needs exactly these three numbers, so the mIoU of any "keep the pixels below an uncertainty
threshold" subset is exact at bin edges; summing over classes gives the correct / wrong
histograms. Between edges (a removed fraction that cuts a bin) the bin's counts are taken
in proportion, i.e. its pixels are treated as uniformly mixed — the same assumption the
ranking metrics make (see `segdistill.metrics.ranking`). The error in pixel counts is
bounded by the pixels of one bin. A class left with less than one pixel (ground truth and
prediction together) of such a share counts as absent, not as IoU 0: a rare class whose
few pixels lie in the cut bin is removed in most orderings of that bin, and an IoU of 0
would pull the mean down by a whole class.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segdistill.data.labels import IGNORE_INDEX
from segdistill.defaults import SOFTMAX_UNCERTAINTY
from segdistill.metrics.ranking import (
    bin_edges,
    bin_indices,
    downsample,
    ranking_metrics,
    risk_coverage_metrics,
)
from segdistill.metrics.state import StreamingMetric, to_json

DEFAULT_REMOVED_FRACTIONS = tuple(i / 10 for i in range(10))

# Rows of `class_counts_by_bin`.
_GT, _PRED, _TP = 0, 1, 2


def nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def iou_from_counts(tp: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (GT + PRED - TP); NaN for a class in neither ground truth nor
    prediction. All arguments [C] (counts may be fractional)."""
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def removal_point(curve: dict, fraction: float) -> int | None:
    """Index of `fraction` in a computed `miou_vs_removed` curve's removed_fraction (to 6
    decimals, as JSON may round), or None when the curve was not computed there."""
    fractions = [round(f, 6) for f in curve["removed_fraction"]]
    target = round(fraction, 6)
    return fractions.index(target) if target in fractions else None


def iou_vs_removed(class_counts_by_bin: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """Per-class IoU after removing the given fractions of the most uncertain pixels (the
    classes behind DUDES Fig. 4's mIoU curve).

    class_counts_by_bin: [K, 3, C] ground-truth, predicted and true-positive counts per
    uncertainty bin (ascending) and class. The ranking is global over the data set. The
    kept pixels are the lowest bins plus a proportional share of the bin the cut falls in.
    Returns [len(fractions), C] (NaN for a class absent from the kept pixels, i.e. with
    less than one kept pixel of ground truth or prediction, and for every class when
    nothing is kept).
    """
    counts = class_counts_by_bin.astype(np.float64)
    per_bin = counts[:, _PRED].sum(axis=1)  # every valid pixel has exactly one prediction
    cum_pixels = np.concatenate([[0.0], np.cumsum(per_bin)])
    cum_counts = np.concatenate([np.zeros((1, *counts.shape[1:])), np.cumsum(counts, axis=0)])
    total = cum_pixels[-1]
    result = np.full((len(fractions), counts.shape[2]), np.nan)
    for i, fraction in enumerate(fractions):
        keep = (1.0 - fraction) * total
        if keep <= 0:
            continue
        k = min(int(np.searchsorted(cum_pixels, keep, side="right")) - 1, len(per_bin) - 1)
        share = (keep - cum_pixels[k]) / per_bin[k] if per_bin[k] > 0 else 0.0
        kept = cum_counts[k] + share * counts[k]
        union = kept[_GT] + kept[_PRED] - kept[_TP]
        iou = iou_from_counts(kept[_TP], kept[_GT], kept[_PRED])
        result[i] = np.where(union >= 1.0, iou, np.nan)  # under one pixel: absent
    return result


# Shares of the wrong pixels a "probably wrong" flag must catch (`error_operating_points`).
ERROR_RECALLS = (0.5, 0.8, 0.9, 0.95)


def error_operating_points(
    wrong: np.ndarray, correct: np.ndarray, edges: np.ndarray, recalls: tuple[float, ...]
) -> list[dict[str, float | None]]:
    """Where to threshold the uncertainty to flag pixels as probably wrong.

    wrong, correct: [K] pixel counts per uncertainty bin (ascending); edges: [K + 1] bin
    edges. For each target recall r: the highest edge t such that flagging the pixels
    with uncertainty >= t (the bins from t up) catches at least r of the wrong pixels,
    and what that flag does: `recall` (share of wrong pixels flagged), `correct_flagged`
    (share of correct pixels flagged), `flagged` (share of all pixels) and
    `kept_accuracy` (accuracy of the pixels below t; None when none are). Exact at bin
    edges, which is where the threshold lies. Without a wrong pixel every value is None.
    """
    wrong_from = np.concatenate([np.cumsum(wrong[::-1])[::-1], [0]]).astype(np.float64)
    correct_from = np.concatenate([np.cumsum(correct[::-1])[::-1], [0]]).astype(np.float64)
    num_wrong, num_correct = wrong_from[0], correct_from[0]
    points: list[dict[str, float | None]] = []
    for recall in recalls:
        point: dict[str, float | None] = dict.fromkeys(
            ("threshold", "recall", "correct_flagged", "flagged", "kept_accuracy")
        )
        if num_wrong > 0:
            # wrong_from falls as k rises: the last k that still catches enough.
            k = int(np.flatnonzero(wrong_from >= recall * num_wrong)[-1])
            kept = num_wrong + num_correct - wrong_from[k] - correct_from[k]
            point = {
                "threshold": float(edges[k]),
                "recall": wrong_from[k] / num_wrong,
                "correct_flagged": correct_from[k] / num_correct if num_correct else None,
                "flagged": (wrong_from[k] + correct_from[k]) / (num_wrong + num_correct),
                "kept_accuracy": (num_correct - correct_from[k]) / kept if kept else None,
            }
        points.append({"target_recall": recall, **point})
    return points


def expected_calibration_error(
    count: np.ndarray, confidence_sum: np.ndarray, correct: np.ndarray
) -> float:
    """ECE = sum_b n_b / N |accuracy_b - confidence_b| over confidence bins (Guo et al.).
    All arguments [E] per bin. NaN without any pixel."""
    total = count.sum()
    if total == 0:
        return float("nan")
    return float(np.sum(np.abs(correct - confidence_sum)) / total)


def pavpu_curve(accurate: np.ndarray, inaccurate: np.ndarray) -> np.ndarray:
    """pAvPU at every bin edge (Mukhoti & Gal): (n_ac + n_iu) / n over patches.

    accurate, inaccurate: [K] histograms of the mean uncertainty of accurate / inaccurate
    patches. At edge k (k = 0..K) a patch is certain when its bin is below k, i.e. its mean
    uncertainty is below the edge's value. Returns [K + 1] (NaN without any patch).
    """
    acc_certain = np.concatenate([[0.0], np.cumsum(accurate, dtype=np.float64)])
    inacc_certain = np.concatenate([[0.0], np.cumsum(inaccurate, dtype=np.float64)])
    total = acc_certain[-1] + inacc_certain[-1]
    if total == 0:
        return np.full(len(acc_certain), np.nan)
    return (acc_certain + inacc_certain[-1] - inacc_certain) / total


def patch_statistics(
    correct: Tensor, valid: Tensor, uncertainty: Tensor, patch_size: int
) -> tuple[Tensor, Tensor]:
    """Accuracy and mean uncertainty of the non-overlapping patch_size x patch_size patches.

    correct, valid: [B, H, W] bool; uncertainty: [B, H, W]. Both statistics are over the
    valid pixels of a patch; patches without a valid pixel are dropped; the right / bottom
    border patches are partial when H or W is not a multiple of patch_size.
    Returns (accuracy [P], mean_uncertainty [P]) in float64.
    """
    pad = (0, -valid.shape[2] % patch_size, 0, -valid.shape[1] % patch_size)

    def patch_sum(x: Tensor) -> Tensor:
        x = F.pad(x.to(torch.float64), pad)
        b, h, w = x.shape
        return x.view(b, h // patch_size, patch_size, w // patch_size, patch_size).sum((2, 4))

    num_valid = patch_sum(valid)
    num_correct = patch_sum(correct & valid)
    uncertainty_sum = patch_sum(torch.where(valid, uncertainty, 0))
    keep = num_valid > 0
    return num_correct[keep] / num_valid[keep], uncertainty_sum[keep] / num_valid[keep]


class SegmentationEvaluator(StreamingMetric):
    """Streaming segmentation and uncertainty metrics with a fixed-size, mergeable state.

    num_classes: C. inputs: whether `update` receives "logits" (softmax is applied) or
    "probs" (used as they are) - stated by the caller, never guessed from the values.
    num_bins: bins of the uncertainty histograms over uncertainty_range = (lo, hi); values
    outside are clipped into the end bins and counted (`num_clipped`), the exact min / max
    are kept. Use e.g. (0, log C) for entropy in nats. ece_bins: equal-width confidence
    bins of the ECE. patch_size / patch_accuracy_threshold: pAvPU patches and the accuracy
    from which a patch counts as accurate. removed_fractions: points of the mIoU curve.
    plot_bins: resolution of the histograms in the result (divides num_bins).

    State (memory independent of the data): confusion [C, C], class_counts_by_bin
    [num_bins, 3, C], per-class uncertainty sums [C], ECE bins 3 x [ece_bins], patch
    histograms [2, num_bins], extremes and counters.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        inputs: Literal["logits", "probs"],
        ignore_index: int = IGNORE_INDEX,
        num_bins: int = 1000,
        uncertainty_range: tuple[float, float] = (0.0, 1.0),
        ece_bins: int = 15,
        patch_size: int = 4,
        patch_accuracy_threshold: float = 0.5,
        removed_fractions: tuple[float, ...] = DEFAULT_REMOVED_FRACTIONS,
        plot_bins: int = 50,
    ) -> None:
        super().__init__()
        if inputs not in ("logits", "probs"):
            raise ValueError(f"inputs must be 'logits' or 'probs', got {inputs!r}")
        if not uncertainty_range[0] < uncertainty_range[1]:
            raise ValueError(
                f"uncertainty_range must be (lo, hi) with lo < hi, got {uncertainty_range}"
            )
        if num_bins % plot_bins:
            raise ValueError(f"plot_bins ({plot_bins}) must divide num_bins ({num_bins})")
        self.num_classes = num_classes
        self.inputs = inputs
        self.ignore_index = ignore_index
        self.num_bins = num_bins
        self.uncertainty_range = (float(uncertainty_range[0]), float(uncertainty_range[1]))
        self.ece_bins = ece_bins
        self.patch_size = patch_size
        self.patch_accuracy_threshold = patch_accuracy_threshold
        self.removed_fractions = tuple(removed_fractions)
        self.plot_bins = plot_bins

        i64, f64 = torch.int64, torch.float64
        self._register("confusion", torch.zeros(num_classes, num_classes, dtype=i64), "sum")
        self._register(
            "class_counts_by_bin", torch.zeros(num_bins, 3, num_classes, dtype=i64), "sum"
        )
        self._register("uncertainty_sum_by_pred", torch.zeros(num_classes, dtype=f64), "sum")
        self._register("uncertainty_min", torch.tensor(float("inf"), dtype=f64), "min")
        self._register("uncertainty_max", torch.tensor(float("-inf"), dtype=f64), "max")
        self._register("num_clipped", torch.zeros((), dtype=i64), "sum")
        self._register("ece_count", torch.zeros(ece_bins, dtype=i64), "sum")
        self._register("ece_confidence_sum", torch.zeros(ece_bins, dtype=f64), "sum")
        self._register("ece_correct", torch.zeros(ece_bins, dtype=i64), "sum")
        # Row 0: accurate patches, row 1: inaccurate patches.
        self._register("patch_hist", torch.zeros(2, num_bins, dtype=i64), "sum")
        self._register("num_images", torch.zeros((), dtype=i64), "sum")
        # Updates whose uncertainty was given / was 1 - max softmax; mixing both is an error.
        self._register("source_updates", torch.zeros(2, dtype=i64), "sum")

    def _config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "inputs": self.inputs,
            "ignore_index": self.ignore_index,
            "num_bins": self.num_bins,
            "uncertainty_range": self.uncertainty_range,
            "ece_bins": self.ece_bins,
            "patch_size": self.patch_size,
            "patch_accuracy_threshold": self.patch_accuracy_threshold,
            "removed_fractions": self.removed_fractions,
            "plot_bins": self.plot_bins,
        }

    @torch.no_grad()
    def update(self, scores: Tensor, uncertainty: Tensor | None, target: Tensor) -> None:
        """Add a batch.

        scores: [B, C, H, W] logits or probabilities (as declared by `inputs`).
        uncertainty: [B, 1, H, W], higher = less certain, or None for 1 - max probability
        (one evaluator takes either always or never a map). A per-class map [B, C, H, W]
        must first be reduced, e.g. to the channel of the predicted class.
        target: [B, H, W] integer class ids, `ignore_index` for pixels not evaluated.
        """
        if scores.dim() != 4:  # unpacked below: [C, H, W] would end in a ValueError of Python's
            raise ValueError(
                f"expected scores [B, {self.num_classes}, H, W] and target [B, H, W], got "
                f"{tuple(scores.shape)} and {tuple(target.shape)} (one image: scores[None])"
            )
        b, c, h, w = scores.shape
        if c != self.num_classes or target.shape != (b, h, w):
            raise ValueError(
                f"expected scores [B, {self.num_classes}, H, W] and target [B, H, W], got "
                f"{tuple(scores.shape)} and {tuple(target.shape)}"
            )
        # Probabilities rounded to half precision sum to 1 within half their eps (bfloat16:
        # 3e-3 seen over 19 classes, eps 8e-3); the probability check below allows eps.
        eps = torch.finfo(scores.dtype).eps if scores.dtype.is_floating_point else 0.0
        sum_tolerance = max(1e-3, eps)
        scores = scores.detach().float()
        max_score, pred = scores.max(dim=1)
        if self.inputs == "logits":
            # max softmax = exp(max logit - logsumexp), without a [B, C, H, W] softmax.
            confidence = (max_score - torch.logsumexp(scores, dim=1)).exp_()
        else:
            confidence = max_score
        given = uncertainty is not None
        if uncertainty is None:
            pixel_unc = 1.0 - confidence
        elif uncertainty.shape != (b, 1, h, w):
            raise ValueError(
                f"uncertainty must be [B, 1, H, W] = {(b, 1, h, w)}, got {tuple(uncertainty.shape)}"
            )
        else:
            # float64 stays float64: rounded to float32, a value by a bin edge can change bins.
            pixel_unc = uncertainty.detach()[:, 0]
            pixel_unc = pixel_unc.to(torch.promote_types(pixel_unc.dtype, torch.float32))
        other = self._state["source_updates"][1 if given else 0]
        if other > 0:
            raise ValueError(
                "this evaluator has seen batches with and without an uncertainty map; use "
                "one evaluator per uncertainty source"
            )

        valid = target != self.ignore_index
        target_v = target[valid].long()
        if target_v.numel() and (target_v.min() < 0 or target_v.max() >= self.num_classes):
            raise ValueError(
                f"target holds ids outside 0..{self.num_classes - 1} that are not "
                f"ignore_index={self.ignore_index}"
            )
        pred_v, unc_v, conf_v = pred[valid], pixel_unc[valid], confidence[valid]
        # Every check before the first count is added: a refused batch leaves no trace.
        if not torch.isfinite(conf_v).all():
            raise ValueError(f"scores ({self.inputs}) hold NaN or inf at evaluated pixels")
        if self.inputs == "probs" and pred_v.numel():
            probs_v = scores.movedim(1, -1)[valid]  # [N, C]: ignore pixels may hold anything
            in_range = probs_v.min() >= -1e-4 and probs_v.max() <= 1 + 1e-4
            if not in_range or (probs_v.sum(dim=1) - 1).abs().max() > sum_tolerance:
                raise ValueError(
                    "scores are not probabilities (each pixel's in [0, 1], summing to 1): "
                    "give the softmax, or make the evaluator with inputs='logits'"
                )
        if not torch.isfinite(unc_v).all():
            raise ValueError("uncertainty holds NaN or inf at evaluated pixels")
        correct_v = pred_v == target_v
        self._add_pixels(pred_v, target_v, unc_v, conf_v, correct_v)
        self._add_patches(pred == target, valid, pixel_unc)
        self._state["num_images"] += b
        self._state["source_updates"][0 if given else 1] += 1

    def _add_pixels(
        self, pred: Tensor, target: Tensor, unc: Tensor, conf: Tensor, correct: Tensor
    ) -> None:
        """Per-pixel state from the N valid pixels: pred, target int64 [N], unc, conf [N]
        float, correct bool [N]."""
        st, cls, nb = self._state, self.num_classes, self.num_bins
        if pred.numel() == 0:
            return
        st["confusion"] += _counts(target * cls + pred, cls * cls).view(cls, cls)
        at_bin = bin_indices(unc, self.uncertainty_range, nb) * cls
        at_pred = at_bin + pred
        st["class_counts_by_bin"] += torch.stack(
            [
                _counts(at_bin + target, nb * cls).view(nb, cls),
                _counts(at_pred, nb * cls).view(nb, cls),
                _counts(at_pred[correct], nb * cls).view(nb, cls),
            ],
            dim=1,
        )
        unc64 = unc.to(torch.float64)
        st["uncertainty_sum_by_pred"] += torch.bincount(pred, unc64, cls).cpu()
        st["uncertainty_min"] = torch.minimum(st["uncertainty_min"], unc64.min().cpu())
        st["uncertainty_max"] = torch.maximum(st["uncertainty_max"], unc64.max().cpu())
        lo, hi = self.uncertainty_range
        st["num_clipped"] += ((unc < lo) | (unc > hi)).sum().cpu()

        # Confidence bin b holds (b / E, (b + 1) / E], the usual ECE convention.
        conf64 = conf.to(torch.float64)
        ece_bin = (conf64 * self.ece_bins).ceil_().sub_(1).clamp_(0, self.ece_bins - 1).long()
        st["ece_count"] += _counts(ece_bin, self.ece_bins)
        st["ece_confidence_sum"] += torch.bincount(ece_bin, conf64, self.ece_bins).cpu()
        st["ece_correct"] += _counts(ece_bin[correct], self.ece_bins)

    def _add_patches(self, correct: Tensor, valid: Tensor, uncertainty: Tensor) -> None:
        accuracy, mean_unc = patch_statistics(correct, valid, uncertainty, self.patch_size)
        inaccurate = (accuracy < self.patch_accuracy_threshold).long()
        index = inaccurate * self.num_bins + bin_indices(
            mean_unc, self.uncertainty_range, self.num_bins
        )
        self._state["patch_hist"] += _counts(index, 2 * self.num_bins).view(2, self.num_bins)

    def compute(self) -> dict[str, Any]:
        """All results as plain JSON values; undefined values are None.

        Keys: num_classes, ignore_index, num_images, num_pixels (evaluated pixels);
        segmentation: iou [C] (None for a class absent from ground truth and prediction),
        miou, pixel_accuracy, mean_class_accuracy, confusion_matrix [C][C] (rows ground
        truth); calibration: ece, bin_edges [E + 1], count / accuracy / confidence [E];
        uncertainty: source ("given" | "1 - max softmax"), range, min, max, num_clipped,
        pixel_mean, class_mean, per_class_mean [C] (by predicted class), misclassification
        {auroc, aupr, fpr95} (wrong pixel positive; None without any wrong or any correct
        pixel), aurc, eaurc, pavpu {max, threshold_at_max, thresholds, values,
        num_patches}, miou_vs_removed {removed_fraction [F], miou [F], iou [F][C]
        (per class)}, histograms {edges
        [plot_bins + 1], correct, wrong [plot_bins]}.
        """
        st = {k: v.numpy() for k, v in self._state.items()}
        confusion = st["confusion"].astype(np.float64)
        num_pixels = confusion.sum()
        tp, gt, pred = np.diag(confusion), confusion.sum(1), confusion.sum(0)
        iou = iou_from_counts(tp, gt, pred)
        with np.errstate(invalid="ignore", divide="ignore"):
            class_accuracy = np.where(gt > 0, tp / gt, np.nan)
            per_class_unc = np.where(pred > 0, st["uncertainty_sum_by_pred"] / pred, np.nan)
            pixel_accuracy = tp.sum() / num_pixels if num_pixels else np.nan
            pixel_unc = st["uncertainty_sum_by_pred"].sum() / num_pixels if num_pixels else np.nan

        by_bin = st["class_counts_by_bin"]
        removed_iou = iou_vs_removed(by_bin, self.removed_fractions)
        correct_hist = by_bin[:, _TP].sum(1)
        wrong_hist = by_bin[:, _PRED].sum(1) - correct_hist
        pavpu = pavpu_curve(st["patch_hist"][0], st["patch_hist"][1])
        edges = bin_edges(self.uncertainty_range, self.num_bins)
        step = self.num_bins // self.plot_bins
        best = int(np.nanargmax(pavpu)) if not np.isnan(pavpu).all() else None
        ece_count = st["ece_count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            ece_accuracy = st["ece_correct"] / ece_count
            ece_confidence = st["ece_confidence_sum"] / ece_count
        given, fallback = st["source_updates"]
        if given and fallback:
            raise ValueError("merged evaluators used different uncertainty sources")

        return to_json(
            {
                "num_classes": self.num_classes,
                "ignore_index": self.ignore_index,
                "num_images": int(st["num_images"]),
                "num_pixels": int(num_pixels),
                "segmentation": {
                    "iou": iou,
                    "miou": nanmean(iou),
                    "pixel_accuracy": pixel_accuracy,
                    "mean_class_accuracy": nanmean(class_accuracy),
                    "confusion_matrix": st["confusion"],
                },
                "calibration": {
                    "ece": expected_calibration_error(
                        ece_count, st["ece_confidence_sum"], st["ece_correct"]
                    ),
                    "bin_edges": np.linspace(0.0, 1.0, self.ece_bins + 1),
                    "count": ece_count,
                    "accuracy": ece_accuracy,
                    "confidence": ece_confidence,
                },
                "uncertainty": {
                    "source": SOFTMAX_UNCERTAINTY if fallback else "given" if given else None,
                    "range": self.uncertainty_range,
                    "min": float(st["uncertainty_min"]) if num_pixels else np.nan,
                    "max": float(st["uncertainty_max"]) if num_pixels else np.nan,
                    "num_clipped": int(st["num_clipped"]),
                    "pixel_mean": pixel_unc,
                    "class_mean": nanmean(per_class_unc),
                    "per_class_mean": per_class_unc,
                    "misclassification": ranking_metrics(
                        wrong_hist, correct_hist, interpolate=True
                    ),
                    **risk_coverage_metrics(correct_hist + wrong_hist, wrong_hist),
                    "error_operating_points": error_operating_points(
                        wrong_hist, correct_hist, edges, ERROR_RECALLS
                    ),
                    "pavpu": {
                        "max": pavpu[best] if best is not None else np.nan,
                        "threshold_at_max": edges[best] if best is not None else np.nan,
                        "thresholds": edges[::step],
                        "values": pavpu[::step],
                        "num_patches": int(st["patch_hist"].sum()),
                    },
                    "miou_vs_removed": {
                        "removed_fraction": self.removed_fractions,
                        "miou": [nanmean(row) for row in removed_iou],
                        "iou": removed_iou,
                    },
                    "histograms": {
                        "edges": edges[::step],
                        "correct": downsample(correct_hist, self.plot_bins),
                        "wrong": downsample(wrong_hist, self.plot_bins),
                    },
                },
            }
        )


def _counts(index: Tensor, size: int) -> Tensor:
    """bincount of int64 indices into a CPU int64 tensor of length `size`."""
    return torch.bincount(index, minlength=size).cpu()
