"""Ranking metrics from counts against sklearn and direct formulas."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from segdistill.metrics.ranking import (
    bin_edges,
    bin_indices,
    ranking_metrics,
    risk_coverage_metrics,
)


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, level, side="left")])


def counts_per_level(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    levels, index = np.unique(scores, return_inverse=True)
    return (
        np.bincount(index[labels == 1], minlength=levels.size),
        np.bincount(index[labels == 0], minlength=levels.size),
    )


def test_exact_levels_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(500) < 0.3
    scores = rng.integers(0, 12, 500) + 3 * labels  # many ties, informative
    pos, neg = counts_per_level(labels, scores)
    got = ranking_metrics(pos, neg, interpolate=False)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["fpr95"] == pytest.approx(fpr_at_tpr(labels, scores), abs=1e-12)


def test_fine_bins_approximate_sklearn() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(50_000) < 0.1
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.15), 0, 1)
    idx = bin_indices(torch.from_numpy(scores), (0.0, 1.0), 1000).numpy()
    pos = np.bincount(idx[labels], minlength=1000)
    neg = np.bincount(idx[~labels], minlength=1000)
    got = ranking_metrics(pos, neg, interpolate=True)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    assert got["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-3)
    assert got["fpr95"] == pytest.approx(fpr_at_tpr(labels, scores), abs=1e-3)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_one_level_gives_chance_values(level: int) -> None:
    # Wherever the level lies, the highest bin included (the ROC's first segment).
    pos, neg = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    pos[level], neg[level] = 30, 70
    got = ranking_metrics(pos, neg, interpolate=True)
    assert got["auroc"] == 0.5
    assert got["aupr"] == pytest.approx(0.3)  # the positive rate, as sklearn for a constant
    assert got["fpr95"] == pytest.approx(0.95)


def test_exact_fpr_where_the_tpr_is_exactly_95_percent() -> None:
    # 20 positives with distinct scores: the 19th from the top reaches TPR 0.95 exactly,
    # and FPR95 is read there (sklearn's roc_curve point), not one threshold lower.
    rng = np.random.default_rng(4)
    scores = rng.permutation(200).astype(float)
    labels = np.zeros(200, dtype=bool)
    labels[rng.choice(200, 20, replace=False)] = True
    pos, neg = counts_per_level(labels, scores)
    for interpolate in (False, True):  # one sample per level: bins are exact
        got = ranking_metrics(pos, neg, interpolate=interpolate)
        assert got["fpr95"] == pytest.approx(fpr_at_tpr(labels, scores), abs=1e-12)
        assert got["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert 0.95 in tpr and fpr[np.searchsorted(tpr, 0.95)] < fpr[np.searchsorted(tpr, 0.95) + 1]


def interleaved_ap(pos: np.ndarray, neg: np.ndarray) -> float:
    """The module docstring's binned AP by brute force: from the highest bin down, a bin's
    b positives and f negatives are b groups of f / b negatives, each followed by one
    positive; AP is the mean precision at the positives of that sequence."""
    seen_pos = seen = 0.0
    precisions = []
    for b, f in zip(pos[::-1].tolist(), neg[::-1].tolist()):
        step = (b + f) / b if b else 0.0
        precisions += [(seen_pos + j) / (seen + j * step) for j in range(1, b + 1)]
        seen_pos, seen = seen_pos + b, seen + b + f
    return float(np.mean(precisions))


def test_binned_ap_is_the_step_ap_of_evenly_interleaved_bins() -> None:
    # Bins of few samples (the digamma form) and one after 6,008 samples (x > 1000: the
    # asymptotic series), each term of which moves the result by more than 1e-9.
    pos = np.array([3, 0, 2, 5, 1, 4, 1])
    neg = np.array([40, 7, 3, 5, 6000, 2, 0])
    got = ranking_metrics(pos, neg, interpolate=True)
    assert got["aupr"] == pytest.approx(interleaved_ap(pos, neg), abs=1e-12)
    rng = np.random.default_rng(5)
    pos, neg = rng.integers(0, 40, 50), rng.integers(0, 3000, 50)
    got = ranking_metrics(pos, neg, interpolate=True)
    assert got["aupr"] == pytest.approx(interleaved_ap(pos, neg), abs=1e-12)


def test_undefined_without_positives_or_negatives() -> None:
    for pos, neg in ((np.array([0, 0]), np.array([3, 1])), (np.array([2, 0]), np.array([0, 0]))):
        got = ranking_metrics(pos, neg, interpolate=True)
        assert all(np.isnan(v) for v in got.values())


def test_bin_indices_edges_and_clipping() -> None:
    values = torch.tensor([-1.0, 0.0, 0.0999, 0.1, 0.5, 0.9999, 1.0, 7.0])
    assert bin_indices(values, (0.0, 1.0), 10).tolist() == [0, 0, 0, 1, 5, 9, 9, 9]
    assert np.allclose(bin_edges((0.0, 2.0), 4), [0, 0.5, 1, 1.5, 2])


def test_risk_coverage_against_sorted_pixels() -> None:
    rng = np.random.default_rng(3)
    wrong = rng.random(40_000) < 0.2
    unc = np.clip(rng.normal(0.3 + 0.25 * wrong, 0.15), 0, 1)
    order = np.argsort(unc, kind="stable")
    k = np.arange(1, wrong.size + 1)
    aurc = np.mean(np.cumsum(wrong[order]) / k)
    oracle = np.mean(np.cumsum(np.sort(wrong)) / k)
    idx = bin_indices(torch.from_numpy(unc), (0.0, 1.0), 1000).numpy()
    counts = np.bincount(idx, minlength=1000)
    errors = np.bincount(idx[wrong], minlength=1000)
    got = risk_coverage_metrics(counts, errors)
    assert got["aurc"] == pytest.approx(aurc, abs=1e-3)
    assert got["eaurc"] == pytest.approx(aurc - oracle, abs=1e-3)


def test_risk_coverage_special_cases() -> None:
    # No error: zero risk everywhere; constant uncertainty: risk is the error rate.
    assert risk_coverage_metrics(np.array([5, 5]), np.array([0, 0])) == {"aurc": 0.0, "eaurc": 0.0}
    assert risk_coverage_metrics(np.array([0, 10]), np.array([0, 4]))["aurc"] == pytest.approx(0.4)
    assert all(np.isnan(v) for v in risk_coverage_metrics(np.zeros(3), np.zeros(3)).values())


def test_bin_indices_of_float32_values_next_to_every_edge() -> None:
    """A float32 value at or one ulp either side of a bin edge goes to the bin it lies in
    (compared with the float64 edges): scaled in float32, many round onto the next edge."""
    edges32 = (np.arange(1, 1000) / 1000).astype(np.float32)
    values = np.concatenate(
        [np.nextafter(edges32, np.float32(0)), edges32, np.nextafter(edges32, np.float32(1))]
    )
    expected = np.searchsorted(bin_edges((0.0, 1.0), 1000), values.astype(np.float64), "right") - 1
    assert bin_indices(torch.from_numpy(values), (0.0, 1.0), 1000).tolist() == expected.tolist()
