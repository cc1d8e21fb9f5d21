"""Image-level OOD scores and metrics, pixel anomaly detection and student-teacher
uncertainty agreement, against numpy and sklearn."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from segdistill.defaults import AGGREGATORS
from segdistill.metrics import AnomalyEvaluator, PairedUncertaintyStats, image_scores, ood_metrics

IGNORE = 255


def expected_scores(values: np.ndarray) -> dict[str, float]:
    """Every aggregator of an image's valid uncertainty values, in numpy."""
    return {
        "min": values.min(),
        "mean": values.mean(),
        "median": np.median(values),
        "max": values.max(),
        "median_plus_min_over_max": (np.median(values) + values.min()) / values.max(),
    }


def test_image_scores_match_numpy() -> None:
    rng = np.random.default_rng(0)
    unc = rng.random((5, 1, 7, 9))
    valid = rng.random((5, 7, 9)) < 0.7
    valid[1] = False  # no valid pixel
    valid[2] = True
    unc[3] = 0.0  # max 0
    valid[4] = False
    valid[4, 0, :4] = True  # even count: median averages the two middle values
    got = image_scores(torch.tensor(unc), torch.tensor(valid))
    assert tuple(got) == AGGREGATORS
    for i in (0, 2, 4):
        for key, value in expected_scores(unc[i, 0][valid[i]]).items():
            assert got[key][i].item() == pytest.approx(value, abs=1e-12), (key, i)
    assert all(torch.isnan(got[key][1]) for key in AGGREGATORS)
    assert got["median_plus_min_over_max"][3].item() == 2.0
    whole = image_scores(torch.tensor(unc[:1]))
    assert whole["median"].item() == pytest.approx(np.median(unc[0]))


def test_ood_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    scores_in = np.round(rng.normal(0.3, 0.1, 60), 2)  # rounded: ties across the two sets
    scores_out = np.round(rng.normal(0.42, 0.1, 40), 2)
    got = ood_metrics(torch.tensor(scores_in), scores_out)
    json.dumps(got, allow_nan=False)
    labels = np.r_[np.zeros(60), np.ones(40)]
    scores = np.r_[scores_in, scores_out]
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["aupr"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)
    np.testing.assert_allclose(got["roc"]["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(got["roc"]["tpr"], tpr, atol=1e-12)
    assert got["roc"]["thresholds"][0] is None
    np.testing.assert_allclose(got["roc"]["thresholds"][1:], thresholds[1:])
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([0.1, float("nan")], [0.2])


def make_anomaly_batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (rng.random((2, 20, 24)) < 0.05).astype(np.int64)
    # In (-0.05, 0.95): a few scores below the histogram range, no exact ties.
    scores = 1 / (1 + np.exp(-rng.normal(-1 + 1.5 * mask, 0.8))) - 0.05
    mask[rng.random(mask.shape) < 0.2] = IGNORE
    return torch.tensor(scores[:, None], dtype=torch.float32), torch.tensor(mask)


def test_anomaly_evaluator_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    batches = [make_anomaly_batch(rng) for _ in range(5)]
    ev, first, second = AnomalyEvaluator(), AnomalyEvaluator(), AnomalyEvaluator()
    for i, (scores, mask) in enumerate(batches):
        ev.update(scores, mask)
        (first if i < 2 else second).update(scores[:, 0], mask)
    got = ev.compute()
    json.dumps(got, allow_nan=False)
    assert json.dumps(first.merge(second).compute()) == json.dumps(got)
    scores = np.concatenate([s.numpy().ravel() for s, _ in batches]).astype(np.float64)
    labels = np.concatenate([m.numpy().ravel() for _, m in batches])
    keep = labels != IGNORE
    scores, labels = scores[keep], labels[keep]
    assert (
        got["num_anomaly_pixels"] == labels.sum()
        and got["num_normal_pixels"] == (labels == 0).sum()
    )
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-3)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=2e-3)
    assert got["min"] == pytest.approx(scores.min()) and got["num_clipped"] == (scores < 0).sum()
    assert sum(got["histograms"]["anomaly"]) == labels.sum()


def test_anomaly_evaluator_edge_cases() -> None:
    ev = AnomalyEvaluator()
    ev.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert {ev.compute()[k] for k in ("ap", "auroc", "fpr95")} == {None}  # no anomaly
    with pytest.raises(ValueError, match="mask values"):
        ev.update(torch.rand(1, 4, 4), torch.full((1, 4, 4), 2))
    empty = AnomalyEvaluator()
    empty.update(torch.rand(1, 4, 4), torch.full((1, 4, 4), IGNORE))
    assert empty.compute()["min"] is None


def test_paired_stats_match_numpy() -> None:
    rng = np.random.default_rng(3)
    stats, first, second = (
        PairedUncertaintyStats(),
        PairedUncertaintyStats(),
        PairedUncertaintyStats(),
    )
    xs, ys, wrongs = [], [], []
    for i in range(4):
        teacher = rng.random((2, 1, 10, 12)) * 0.5
        student = np.clip(teacher + rng.normal(0, 0.05, teacher.shape), 0, 1)
        target = rng.integers(0, 3, (2, 10, 12))
        target[rng.random(target.shape) < 0.1] = IGNORE
        pred = rng.integers(0, 3, (2, 10, 12))
        args = [torch.tensor(a) for a in (student, teacher, pred, target)]
        stats.update(*args)
        (first if i % 2 else second).update(*args)
        valid = target != IGNORE
        xs.append(student[:, 0][valid])
        ys.append(teacher[:, 0][valid])
        wrongs.append(pred[valid] != target[valid])
    x, y, wrong = np.concatenate(xs), np.concatenate(ys), np.concatenate(wrongs)
    got = stats.compute()
    assert got["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-10)
    assert got["num_pixels"] == x.size
    for key, mask in (("correct", ~wrong), ("wrong", wrong)):
        expected = np.histogram2d(y[mask], x[mask], bins=100, range=((0, 1), (0, 1)))[0]
        np.testing.assert_array_equal(got["hist2d"][key], expected)
    merged = first.merge(second).compute()
    assert merged["hist2d"] == got["hist2d"]
    assert merged["pearson"] == pytest.approx(got["pearson"], abs=1e-12)


def test_paired_stats_constant_map_has_no_correlation() -> None:
    stats = PairedUncertaintyStats()
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    stats.update(torch.full((1, 1, 4, 4), 0.2), torch.rand(1, 1, 4, 4), target, target)
    assert stats.compute()["pearson"] is None
    # 19 pixels of 0.1: the variance from the sums is 2.8e-17, not 0, and r came out as
    # a number (1e-9) for a map that has none.
    rng = np.random.default_rng(5)
    target = torch.zeros(1, 1, 19, dtype=torch.long)
    teacher = torch.tensor(rng.random((1, 1, 1, 19)), dtype=torch.float32)
    constant = torch.full((1, 1, 1, 19), 0.1)
    for student, other in ((constant, teacher), (teacher, constant)):
        stats = PairedUncertaintyStats()
        stats.update(student, other, target, target)
        assert stats.compute()["pearson"] is None
    # Constant in each batch but not over the data set: defined.
    stats = PairedUncertaintyStats()
    for value in (0.1, 0.3):
        stats.update(torch.full((1, 1, 1, 19), value), teacher, target, target)
    assert stats.compute()["pearson"] is not None


def test_scores_closer_than_float32_resolves_stay_apart() -> None:
    """Python floats are taken as float64 (they passed through float32: a tie)."""
    result = ood_metrics([0.5], [0.5 + 1e-9])
    assert result["auroc"] == roc_auc_score([0, 1], [0.5, 0.5 + 1e-9]) == 1.0
    assert result["roc"]["thresholds"][1] == 0.5 + 1e-9


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 3, 16, 16)])
def test_image_scores_refuse_a_map_that_is_not_one_per_image(shape: tuple[int, ...]) -> None:
    """A [B, H, W] map was scored on its first row, a [B, C, H, W] one on its class 0."""
    with pytest.raises(ValueError, match=r"one map per image \[B, 1, H, W\]"):
        image_scores(torch.rand(shape))


def test_scores_on_the_range_ends_are_not_clipped() -> None:
    """lo and hi belong to the score range (first and last bins); only scores outside it
    count as clipped, ignore pixels not at all."""
    ev = AnomalyEvaluator()
    scores = torch.tensor([[[0.0, 1.0, 0.3, 1.0, -0.5, 1.25, 7.0]]])
    mask = torch.tensor([[[0, 1, 0, 1, 0, 1, IGNORE]]])
    ev.update(scores, mask)
    got = ev.compute()
    assert got["num_clipped"] == 2
    assert (got["min"], got["max"]) == (-0.5, 1.25)


def test_paired_stats_count_the_values_outside_either_range() -> None:
    student = torch.tensor([[[[-0.1, 0.0, 1.0, 1.2, 0.5, 0.5, 2.0]]]])
    teacher = torch.tensor([[[[0.2, 0.6, 0.6, 0.6, 0.8, 0.3, 0.1]]]])
    target = torch.tensor([[[0, 0, 0, 0, 0, 0, IGNORE]]])
    stats = PairedUncertaintyStats(teacher_range=(0.0, 0.5))
    stats.update(student, teacher, target, target)
    # student: -0.1 and 1.2 outside (0, 1); teacher: 0.6, 0.6, 0.6, 0.8 outside (0, 0.5)
    assert stats.compute()["num_clipped"] == 2 + 4
    assert stats.compute()["num_pixels"] == 6


def test_paired_correlation_of_maps_far_from_zero_keeps_its_precision() -> None:
    """Values 1000.5 +- 1e-4 in a range (1000, 1001): sums of squares around 0 would lose
    the variance (1e-8) to the squared mean (1e6) in float64; around the range's middle
    they keep it."""
    rng = np.random.default_rng(4)
    x = 1000.5 + rng.normal(0, 1e-4, (1, 1, 40, 50))
    y = x + rng.normal(0, 1e-4, x.shape)
    target = torch.zeros(1, 40, 50, dtype=torch.long)
    stats = PairedUncertaintyStats(student_range=(1000.0, 1001.0), teacher_range=(1000.0, 1001.0))
    stats.update(torch.tensor(x), torch.tensor(y), target, target)
    expected = np.corrcoef(x.ravel(), y.ravel())[0, 1]
    assert stats.compute()["pearson"] == pytest.approx(expected, abs=1e-8)


def test_anomaly_extremes_and_binned_fpr95_over_several_batches() -> None:
    """The exact max and min are kept over all batches (the max in the first, the min in
    the second, an ignore pixel with a higher score in the last); a constant score gives
    the chance ROC, read on the bin's segment: FPR at 95 % TPR 0.95, AP the anomaly rate."""
    ev = AnomalyEvaluator()
    masks = [torch.tensor([[[0, 1, 0, 1]]]), torch.tensor([[[0, 0, 1, 0]]])]
    masks.append(torch.tensor([[[0, 0, 0, IGNORE]]]))
    scores = [torch.tensor([[[0.4, 0.9, 0.2, 0.5]]]), torch.tensor([[[0.1, 0.3, 0.6, 0.3]]])]
    scores.append(torch.tensor([[[0.3, 0.5, 0.7, 5.0]]]))
    for s, m in zip(scores, masks):
        ev.update(s, m)
    got = ev.compute()
    assert got["max"] == pytest.approx(0.9) and got["min"] == pytest.approx(0.1)

    constant = AnomalyEvaluator()
    for m in masks:
        constant.update(torch.full(m.shape, 0.42), m)
    got = constant.compute()
    assert got["auroc"] == 0.5 and got["fpr95"] == pytest.approx(0.95, abs=1e-12)
    assert got["ap"] == pytest.approx(3 / 11)


def test_paired_correlation_of_a_map_constant_to_float64_round_off_is_undefined() -> None:
    """Student values a few ulps apart (not constant: min < max) whose variance from the
    sums is exactly 0: r is undefined (None), not an infinite number that breaks JSON."""
    a = 0.05856803480519435
    x = a + np.array([2, 1, 1, 0, 2, 1, 2, 2, 2, 0, 2, 0, 1]) * np.spacing(a)
    y = np.linspace(0.1, 0.9, 13)
    target = torch.zeros(1, 1, 14, dtype=torch.long)
    target[0, 0, -1] = IGNORE
    stats = PairedUncertaintyStats()
    stats.update(
        torch.tensor(np.r_[x, 0.9]).view(1, 1, 1, 14),
        torch.tensor(np.r_[y, 0.0]).view(1, 1, 1, 14),
        target,
        target,
    )
    got = stats.compute()
    json.dumps(got, allow_nan=False)
    assert got["num_pixels"] == 13 and got["pearson"] is None


def test_image_scores_of_no_image_are_empty() -> None:
    """An empty batch raised "cannot reshape tensor of 0 elements"."""
    scores = image_scores(torch.zeros(0, 1, 4, 4))
    assert set(scores) == set(AGGREGATORS)
    assert all(value.shape == (0,) for value in scores.values())


def test_image_scores_ignore_non_finite_values_at_invalid_pixels() -> None:
    """Only the valid pixels are aggregated: NaN or inf uncertainty elsewhere (a padded
    border) changes no score."""
    rng = np.random.default_rng(6)
    unc = rng.random((3, 1, 5, 6))
    valid = rng.random((3, 5, 6)) < 0.6
    holes = unc.copy()
    holes[0, 0][~valid[0]] = np.nan
    holes[1, 0][~valid[1]] = np.inf
    holes[2, 0][~valid[2]] = -np.inf
    got = image_scores(torch.tensor(holes), torch.tensor(valid))
    for i in range(3):
        for key, value in expected_scores(unc[i, 0][valid[i]]).items():
            assert got[key][i].item() == pytest.approx(value, abs=1e-12), (key, i)
