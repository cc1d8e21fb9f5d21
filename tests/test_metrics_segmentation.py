"""SegmentationEvaluator against independent numpy / sklearn / cityscapesscripts results,
over several batches, with edge cases."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from doc_layouts import DOCS, braced_tree, key_tree
from segdistill.data.labels import CLASS_NAMES, TRAIN_ID_TO_LABEL_ID
from segdistill.metric_fields import SPLIT_METRICS, split_value
from segdistill.metrics import SegmentationEvaluator
from segdistill.metrics.segmentation import DEFAULT_REMOVED_FRACTIONS, removal_point

IGNORE = 255


def make_batches(
    num_batches: int = 4,
    b: int = 2,
    c: int = 6,
    h: int = 30,
    w: int = 42,
    absent: int | None = None,
    seed: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(logits [b,c,h,w], uncertainty [b,1,h,w] in (0,1) informative of errors, target)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        target = rng.integers(0, c, (b, h, w))
        if absent is not None:
            target[target == absent] = (absent + 1) % c
        logits = rng.normal(size=(b, c, h, w))
        np.put_along_axis(
            logits, target[:, None], np.take_along_axis(logits, target[:, None], 1) + 2.0, 1
        )
        if absent is not None:
            logits[:, absent] -= 10.0
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        unc = 1 / (1 + np.exp(-(4 * (1 - probs.max(1)) - 2 + rng.normal(0, 0.7, (b, h, w)))))
        target[rng.random((b, h, w)) < 0.1] = IGNORE
        batches.append(
            (
                torch.tensor(logits, dtype=torch.float32),
                torch.tensor(unc[:, None], dtype=torch.float32),
                torch.tensor(target),
            )
        )
    return batches


def pooled(batches: list) -> dict[str, np.ndarray]:
    """Valid pixels of all batches, flattened, for the reference computations."""
    logits = np.concatenate(
        [lg.numpy().transpose(0, 2, 3, 1).reshape(-1, lg.shape[1]) for lg, _, _ in batches]
    )
    unc = np.concatenate([u.numpy().ravel() for _, u, _ in batches]).astype(np.float64)
    target = np.concatenate([t.numpy().ravel() for _, _, t in batches])
    valid = target != IGNORE
    return {"pred": logits.argmax(1)[valid], "target": target[valid], "unc": unc[valid]}


def evaluate(batches: list, **kwargs) -> dict:
    ev = SegmentationEvaluator(batches[0][0].shape[1], inputs="logits", **kwargs)
    for logits, unc, target in batches:
        ev.update(logits, unc, target)
    return ev.compute()


def reference_iou(pred: np.ndarray, target: np.ndarray, c: int) -> np.ndarray:
    conf = np.bincount(target * c + pred, minlength=c * c).reshape(c, c).astype(float)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return np.array([tp[i] / union[i] if union[i] else np.nan for i in range(c)])


def nan_list(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


@pytest.fixture(scope="module")
def batches() -> list:
    return make_batches(absent=4)


@pytest.fixture(scope="module")
def result(batches: list) -> dict:
    return evaluate(batches)


def test_result_is_strict_json(result: dict) -> None:
    json.dumps(result, allow_nan=False)
    assert result["num_images"] == 8
    assert result["uncertainty"]["source"] == "given"


def test_every_named_split_metric_lies_where_its_path_says(result: dict) -> None:
    """metric_fields.SPLIT_METRICS, which the summaries, the report and an experiment's
    checks read, point into what compute() returns: a number (a list per class), never a
    missing key read as "not evaluated"."""
    model = {"splits": {"test": result}}
    for name in SPLIT_METRICS:
        value = split_value(model, "test", name)
        per_class = name.startswith("per_class")
        assert isinstance(value, list if per_class else float), name
    assert split_value(model, "test", "pavpu") == result["uncertainty"]["pavpu"]["max"]
    assert split_value(model, "test", "miou") == result["segmentation"]["miou"]
    assert split_value(model, "night", "miou") is None  # a split not evaluated


def test_the_documented_metrics_layout_is_what_compute_returns(result: dict) -> None:
    """docs/evaluation.md writes out the metrics.json layout by hand: every key it names
    at every level is one compute() returns, and none is missing."""
    text = (DOCS / "evaluation.md").read_text()
    start = text.index("splits               {split: SegmentationEvaluator.compute()}:")
    block = text[start : text.index("\nood ", start)].split(":", 2)[2]
    assert braced_tree("{" + block + "}") == key_tree(result)


def test_iou_and_accuracies_match_confusion_formula(batches: list, result: dict) -> None:
    ref = pooled(batches)
    iou = reference_iou(ref["pred"], ref["target"], 6)
    assert math.isnan(iou[4]) and result["segmentation"]["iou"][4] is None  # absent class
    np.testing.assert_allclose(nan_list(result["segmentation"]["iou"]), iou, atol=1e-12)
    seg = result["segmentation"]
    assert seg["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    correct = ref["pred"] == ref["target"]
    assert seg["pixel_accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
    class_acc = [correct[ref["target"] == k].mean() for k in range(6) if k != 4]
    assert seg["mean_class_accuracy"] == pytest.approx(np.mean(class_acc), abs=1e-12)
    assert result["num_pixels"] == ref["target"].size


def test_iou_matches_official_cityscapes_script(tmp_path, monkeypatch) -> None:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    batches = make_batches(num_batches=2, b=2, c=19, h=24, w=32, absent=7, seed=5)
    for _, _, target in batches:
        target[target == 12] = 13  # class 12: predicted but never in the ground truth
    gt_files, pred_files = [], []
    for i, (logits, _, target) in enumerate(batches):
        for j in range(target.shape[0]):
            name = f"city_{i:06d}_{j:06d}"
            gt_files.append(str(tmp_path / f"{name}_gtFine_labelIds.png"))
            pred_files.append(str(tmp_path / f"{name}_pred.png"))
            Image.fromarray(TRAIN_ID_TO_LABEL_ID[target[j].numpy()]).save(gt_files[-1])
            pred = logits[j].argmax(0).numpy()
            Image.fromarray(TRAIN_ID_TO_LABEL_ID[pred]).save(pred_files[-1])
    args = copy.copy(cs_eval.args)
    args.quiet, args.evalInstLevelScore, args.JSONOutput = True, False, False
    args.exportFile = str(tmp_path / "cs.json")
    monkeypatch.chdir(tmp_path)
    official = cs_eval.evaluateImgLists(pred_files, gt_files, args)

    ours = evaluate(batches)["segmentation"]
    expected = [official["classScores"][name] for name in CLASS_NAMES]
    assert math.isnan(expected[7]) and ours["iou"][7] is None
    assert expected[12] == 0 and ours["iou"][12] == 0  # counted in the mean, as officially
    np.testing.assert_allclose(nan_list(ours["iou"]), expected, atol=1e-6)
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)


def test_misclassification_detection_matches_sklearn(batches: list, result: dict) -> None:
    ref = pooled(batches)
    wrong = ref["pred"] != ref["target"]
    got = result["uncertainty"]["misclassification"]
    assert got["auroc"] == pytest.approx(roc_auc_score(wrong, ref["unc"]), abs=1e-3)
    assert got["aupr"] == pytest.approx(average_precision_score(wrong, ref["unc"]), abs=1e-3)
    fpr, tpr, _ = roc_curve(wrong, ref["unc"], drop_intermediate=False)
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=2e-3)


def test_error_operating_points_match_flagging_the_pixels_directly(
    batches: list, result: dict
) -> None:
    ref = pooled(batches)  # valid pixels only: the ignore pixels take no part
    wrong = ref["pred"] != ref["target"]
    unc = ref["unc"]
    edges = np.linspace(0.0, 1.0, 1001)  # the evaluator's 1000 bins over (0, 1)
    points = result["uncertainty"]["error_operating_points"]
    assert [p["target_recall"] for p in points] == [0.5, 0.8, 0.9, 0.95]
    for point in points:
        # The highest edge whose flag (uncertainty >= edge) catches the target share.
        catches = [e for e in edges if np.mean(unc[wrong] >= e) >= point["target_recall"]]
        threshold = max(catches)
        assert point["threshold"] == pytest.approx(threshold, abs=1e-12)
        flagged = unc >= threshold
        assert point["recall"] == pytest.approx(np.mean(flagged[wrong]))
        assert point["correct_flagged"] == pytest.approx(np.mean(flagged[~wrong]))
        assert point["flagged"] == pytest.approx(np.mean(flagged))
        assert point["kept_accuracy"] == pytest.approx(np.mean(~wrong[~flagged]))
    # Catching more errors costs more correct pixels.
    costs = [p["correct_flagged"] for p in points]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_aurc_and_removal_curve_match_global_sort(batches: list, result: dict) -> None:
    ref = pooled(batches)
    order = np.argsort(ref["unc"], kind="stable")
    wrong = (ref["pred"] != ref["target"])[order]
    n = wrong.size
    risk = np.cumsum(wrong) / np.arange(1, n + 1)
    unc = result["uncertainty"]
    assert unc["aurc"] == pytest.approx(risk.mean(), abs=1e-3)
    assert unc["eaurc"] == pytest.approx(
        risk.mean() - np.mean(np.cumsum(np.sort(wrong)) / np.arange(1, n + 1)), abs=1e-3
    )
    curve = unc["miou_vs_removed"]
    assert curve["removed_fraction"] == pytest.approx([i / 10 for i in range(10)])
    for fraction, miou, iou in zip(curve["removed_fraction"], curve["miou"], curve["iou"]):
        keep = order[: round((1 - fraction) * n)]
        expected = reference_iou(ref["pred"][keep], ref["target"][keep], 6)
        assert miou == pytest.approx(np.nanmean(expected), abs=2e-3), fraction
        assert [np.nan if v is None else v for v in iou] == pytest.approx(
            expected, abs=5e-3, nan_ok=True
        ), fraction
    assert curve["miou"][0] == pytest.approx(result["segmentation"]["miou"], abs=1e-12)
    assert curve["miou"][-1] > curve["miou"][0] + 0.1  # informative uncertainty helps


def test_a_rare_class_in_the_cut_bin_counts_as_absent_not_as_zero() -> None:
    """Removing 20 % of 10 pixels removes exactly the two most uncertain, which hold the
    only class-2 pixel; the four most uncertain share one bin, so the curve keeps half of
    that bin's counts. Class 2 keeps half a ground-truth pixel: absent (the exact sort
    drops it), not IoU 0. Class 1's IoU is the proportional share's (1.5 / 2)."""
    target = torch.tensor([[[0] * 6 + [1, 1, 1, 2]]])
    pred = torch.tensor([[[0] * 6 + [1, 1, 1, 1]]])
    probs = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    unc = torch.tensor([[[[0.1] * 6 + [0.5001, 0.5002, 0.5003, 0.5004]]]])
    ev = SegmentationEvaluator(3, inputs="probs", removed_fractions=(0.0, 0.2, 0.4))
    ev.update(probs, unc, target)
    curve = ev.compute()["uncertainty"]["miou_vs_removed"]
    assert curve["iou"][0] == pytest.approx([1.0, 0.75, 0.0])  # nothing removed: exact
    assert curve["iou"][1][2] is None and curve["iou"][1][:2] == pytest.approx([1.0, 0.75])
    assert curve["miou"][1] == pytest.approx(0.875)  # before: 0.583, class 2 counted as 0
    # At a bin edge (the whole bin removed) the curve is exact: class 0 alone.
    assert curve["iou"][2] == [1.0, None, None] and curve["miou"][2] == 1.0


def test_per_class_uncertainty_and_histograms(batches: list, result: dict) -> None:
    ref = pooled(batches)
    unc = result["uncertainty"]
    expected = [
        ref["unc"][ref["pred"] == k].mean() if (ref["pred"] == k).any() else np.nan
        for k in range(6)
    ]
    np.testing.assert_allclose(nan_list(unc["per_class_mean"]), expected, atol=1e-9)
    assert unc["per_class_mean"][4] is None  # never predicted
    assert unc["pixel_mean"] == pytest.approx(ref["unc"].mean(), abs=1e-9)
    assert unc["min"] == ref["unc"].min() and unc["max"] == ref["unc"].max()
    wrong = ref["pred"] != ref["target"]
    hist = unc["histograms"]
    assert len(hist["edges"]) == 51 and len(hist["correct"]) == 50
    for key, mask in (("correct", ~wrong), ("wrong", wrong)):
        assert hist[key] == np.histogram(ref["unc"][mask], bins=50, range=(0, 1))[0].tolist()


def test_ece_matches_direct_formula() -> None:
    batches = make_batches(seed=3)
    ev = SegmentationEvaluator(6, inputs="probs")
    conf, correct = [], []
    for logits, _, target in batches:
        probs = torch.softmax(logits, 1)
        ev.update(probs, None, target)
        valid = target != IGNORE
        conf.append(probs.max(1).values[valid].double().numpy())
        correct.append((probs.argmax(1) == target)[valid].numpy())
    conf, correct = np.concatenate(conf), np.concatenate(correct)
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    result = ev.compute()
    assert result["calibration"]["ece"] == pytest.approx(ece, abs=1e-12)
    assert sum(result["calibration"]["count"]) == conf.size
    # No uncertainty map: 1 - max softmax is used and said so.
    assert result["uncertainty"]["source"] == "1 - max softmax"
    assert result["uncertainty"]["pixel_mean"] == pytest.approx(np.mean(1 - conf), abs=1e-9)


def test_logits_and_probs_inputs_agree(batches: list, result: dict) -> None:
    ev = SegmentationEvaluator(6, inputs="probs")
    for logits, unc, target in batches:
        ev.update(torch.softmax(logits, 1), unc, target)
    other = ev.compute()
    assert other["segmentation"] == result["segmentation"]
    assert other["calibration"]["ece"] == pytest.approx(result["calibration"]["ece"], abs=1e-4)


def reference_pavpu(batches: list, thresholds: np.ndarray, size: int = 4) -> np.ndarray:
    """Patch by patch with explicit loops; partial border patches, all-ignore ones skipped."""
    acc, mean_unc = [], []
    for logits, unc, target in batches:
        pred, u, t = logits.argmax(1).numpy(), unc[:, 0].double().numpy(), target.numpy()
        for i in range(t.shape[0]):
            for y in range(0, t.shape[1], size):
                for x in range(0, t.shape[2], size):
                    tp, pp, up = (a[i, y : y + size, x : x + size] for a in (t, pred, u))
                    valid = tp != IGNORE
                    if valid.any():
                        acc.append((pp[valid] == tp[valid]).mean())
                        mean_unc.append(up[valid].mean())
    accurate, mean_unc = np.array(acc) >= 0.5, np.array(mean_unc)
    values = []
    for t in thresholds:
        certain = mean_unc < t
        values.append(((accurate & certain).sum() + (~accurate & ~certain).sum()) / accurate.size)
    return np.array(values)


def test_pavpu_matches_patch_loop(batches: list, result: dict) -> None:
    pavpu = result["uncertainty"]["pavpu"]
    np.testing.assert_allclose(
        pavpu["values"], reference_pavpu(batches, np.array(pavpu["thresholds"])), atol=1e-12
    )
    fine = reference_pavpu(batches, np.linspace(0, 1, 1001))
    assert pavpu["max"] == pytest.approx(fine.max(), abs=1e-12)
    assert pavpu["threshold_at_max"] == pytest.approx(np.linspace(0, 1, 1001)[fine.argmax()])
    assert pavpu["num_patches"] == 8 * 8 * 11  # 30 x 42 -> 8 x 11 patches (partial borders)


def test_merge_and_state_dict_equal_single_pass(batches: list, result: dict) -> None:
    first = SegmentationEvaluator(6, inputs="logits")
    second = SegmentationEvaluator(6, inputs="logits")
    for i, (logits, unc, target) in enumerate(batches):
        (first if i < 3 else second).update(logits, unc, target)
    shard = SegmentationEvaluator(6, inputs="logits")
    shard.load_state_dict(second.state_dict())
    assert json.dumps(first.merge(shard).compute()) == json.dumps(result)
    with pytest.raises(ValueError, match="config"):
        SegmentationEvaluator(6, inputs="logits", num_bins=500).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="same type and config"):
        first.merge(SegmentationEvaluator(7, inputs="logits"))
    first.reset()
    assert first.compute()["num_pixels"] == 0


def test_perfect_prediction() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    ev = SegmentationEvaluator(3, inputs="logits")
    ev.update(logits, torch.rand(2, 1, 8, 8), target)
    result = ev.compute()
    assert result["segmentation"]["miou"] == 1.0
    assert result["segmentation"]["iou"] == [1.0, 1.0, 1.0]
    # No wrong pixel: detection metrics are undefined (None), risk is zero.
    assert set(result["uncertainty"]["misclassification"].values()) == {None}
    points = result["uncertainty"]["error_operating_points"]
    assert all(p["threshold"] is None and p["kept_accuracy"] is None for p in points)
    assert result["uncertainty"]["aurc"] == 0.0 and result["uncertainty"]["eaurc"] == 0.0
    assert result["uncertainty"]["miou_vs_removed"]["miou"] == [1.0] * 10


def test_all_pixels_ignored_gives_none_everywhere() -> None:
    ev = SegmentationEvaluator(3, inputs="logits")
    ev.update(torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.full((2, 8, 8), IGNORE))
    result = ev.compute()
    json.dumps(result, allow_nan=False)
    assert result["num_pixels"] == 0 and result["num_images"] == 2
    assert result["segmentation"]["iou"] == [None] * 3 and result["segmentation"]["miou"] is None
    unc = result["uncertainty"]
    assert unc["aurc"] is None and unc["pavpu"]["max"] is None and unc["min"] is None
    assert unc["miou_vs_removed"]["miou"] == [None] * 10
    assert result["calibration"]["ece"] is None


def test_constant_uncertainty_is_chance(batches: list) -> None:
    ev = SegmentationEvaluator(6, inputs="logits")
    for logits, unc, target in batches:
        ev.update(logits, torch.full_like(unc, 0.3), target)
    result = ev.compute()
    error_rate = 1 - result["segmentation"]["pixel_accuracy"]
    assert result["uncertainty"]["misclassification"]["auroc"] == 0.5
    assert result["uncertainty"]["misclassification"]["aupr"] == pytest.approx(error_rate)
    assert result["uncertainty"]["aurc"] == pytest.approx(error_rate)
    miou = result["uncertainty"]["miou_vs_removed"]["miou"]
    assert miou == pytest.approx([result["segmentation"]["miou"]] * 10)


def test_uncertainty_range_for_entropy(batches: list) -> None:
    ev = SegmentationEvaluator(6, inputs="logits", uncertainty_range=(0.0, math.log(6)))
    narrow = SegmentationEvaluator(6, inputs="logits", uncertainty_range=(0.0, 1.0))
    entropies = []
    for logits, _, target in batches:
        p = torch.softmax(logits, 1)
        entropy = -(p * p.log()).sum(1, keepdim=True)
        ev.update(logits, entropy, target)
        narrow.update(logits, entropy, target)
        entropies.append(entropy[:, 0][target != IGNORE].double())
    entropies = torch.cat(entropies)
    result, clipped = ev.compute()["uncertainty"], narrow.compute()["uncertainty"]
    assert result["num_clipped"] == 0 and result["histograms"]["edges"][-1] == math.log(6)
    assert clipped["num_clipped"] == int((entropies > 1).sum()) > 0
    assert clipped["max"] == pytest.approx(float(entropies.max()))  # exact despite clipping


def test_invalid_inputs_are_rejected() -> None:
    ev = SegmentationEvaluator(3, inputs="logits")
    logits, target = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="inputs"):
        SegmentationEvaluator(3, inputs="softmax")
    with pytest.raises(ValueError, match="outside"):
        ev.update(logits, None, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        ev.update(logits, torch.rand(1, 3, 4, 4), target)
    with pytest.raises(ValueError, match="NaN"):
        ev.update(logits, torch.full((1, 1, 4, 4), float("nan")), target)
    ev.update(logits, torch.rand(1, 1, 4, 4), target)
    with pytest.raises(ValueError, match="one evaluator per uncertainty source"):
        ev.update(logits, None, target)


def test_removal_point_finds_a_fraction_as_json_may_round_it() -> None:
    curve = {"removed_fraction": list(DEFAULT_REMOVED_FRACTIONS)}
    assert removal_point(curve, 0.5) == 5
    assert removal_point(curve, 0.3) == 3
    assert removal_point({"removed_fraction": [0.0, 0.333333]}, 1 / 3) == 1
    assert removal_point(curve, 0.55) is None


def test_a_refused_batch_leaves_no_trace() -> None:
    """A NaN probability passed the checks, the pixel counts were added, and then the ECE
    histogram raised: a caller who went on counted the batch's pixels twice."""
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 3, 4, 4), dim=1)
    target = torch.randint(0, 3, (1, 4, 4))
    uncertainty = torch.rand(1, 1, 4, 4)
    evaluator = SegmentationEvaluator(3, inputs="probs")
    bad = probs.clone()
    bad[0, :, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"scores \(probs\) hold NaN or inf"):
        evaluator.update(bad, uncertainty, target)
    logits = torch.randn(1, 3, 4, 4) * 5  # not probabilities: the ECE came out 4.4
    with pytest.raises(ValueError, match="scores are not probabilities"):
        evaluator.update(logits, uncertainty, target)
    evaluator.update(probs, uncertainty, target)
    result = evaluator.compute()
    assert result["num_pixels"] == 16 and result["num_images"] == 1
    fresh = SegmentationEvaluator(3, inputs="probs")
    fresh.update(probs, uncertainty, target)
    assert json.dumps(result, default=str) == json.dumps(fresh.compute(), default=str)


def test_ignore_pixels_may_hold_anything_with_probability_inputs() -> None:
    """Only pixels whose ground truth is not ignore_index take part, also in the checks:
    zeros or NaN at ignore pixels (a padded border) gave "scores are not probabilities"
    with inputs='probs', where logits with NaN there were accepted. The results equal
    those of the same batch with ordinary probabilities at the ignore pixels."""
    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(2, 3, 5, 6), dim=1)
    target = torch.randint(0, 3, (2, 5, 6))
    target[:, :, -2:] = 255  # a padded right border
    padded = probs.clone()
    padded[0, :, :, -2:] = 0.0
    padded[1, :, :, -2:] = float("nan")
    uncertainty = torch.rand(2, 1, 5, 6)
    results = []
    for scores in (probs, padded):
        evaluator = SegmentationEvaluator(3, inputs="probs")
        evaluator.update(scores, uncertainty, target)
        results.append(json.dumps(evaluator.compute(), default=str))
    assert results[0] == results[1]
    everything_ignored = torch.full_like(target, 255)
    evaluator = SegmentationEvaluator(3, inputs="probs")
    evaluator.update(padded, uncertainty, everything_ignored)  # no evaluated pixel: no check
    assert evaluator.compute()["num_pixels"] == 0
    bad = probs * 2  # still refused where it is evaluated
    with pytest.raises(ValueError, match="scores are not probabilities"):
        evaluator.update(bad, uncertainty, target)


def test_calibration_bins_match_numpy_with_confidences_on_the_edges() -> None:
    """ECE over 4 bins (lo, hi] (Guo et al.), with confidences exactly on bin edges (0.5,
    0.75, 1) and between, some bins over- and some under-confident (so |gap| is taken per
    bin), and ignore pixels that hold the most confident, wrong predictions."""
    rng = np.random.default_rng(7)
    rows = np.array(
        [
            [0.5, 0.25, 0.25],  # confidence 0.5: the top edge of bin (0.25, 0.5]
            [0.4, 0.35, 0.25],
            [0.75, 0.125, 0.125],  # 0.75: the top edge of bin (0.5, 0.75]
            [0.6, 0.3, 0.1],
            [1.0, 0.0, 0.0],  # 1: the top edge of the last bin
            [0.9, 0.05, 0.05],
        ]
    )
    kind = rng.integers(0, len(rows), (2, 8, 10))
    probs = rows[kind].transpose(0, 3, 1, 2)  # [B, 3, H, W], class 0 predicted
    right_share = np.array([0.9, 0.9, 0.3, 0.3, 0.6, 0.6])[kind]  # under / over / over
    target = np.where(rng.random(kind.shape) < right_share, 0, rng.integers(1, 3, kind.shape))
    probs[0, :, :2] = np.array([1.0, 0.0, 0.0])[:, None, None]
    target[0, :2] = IGNORE
    probs32 = torch.tensor(probs, dtype=torch.float32)
    ev = SegmentationEvaluator(3, inputs="probs", ece_bins=4)
    ev.update(probs32, None, torch.tensor(target))
    got = ev.compute()["calibration"]

    valid = target != IGNORE
    conf = probs32.numpy().max(1).astype(np.float64)[valid]
    correct = (target == 0)[valid]
    edges = np.linspace(0, 1, 5)
    count, accuracy, confidence, ece = [], [], [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        count.append(int(in_bin.sum()))
        accuracy.append(correct[in_bin].mean() if in_bin.any() else np.nan)
        confidence.append(conf[in_bin].mean() if in_bin.any() else np.nan)
        if in_bin.any():
            ece += in_bin.mean() * abs(accuracy[-1] - confidence[-1])
    assert got["count"] == count and count[0] == 0 and min(count[1:]) > 0
    np.testing.assert_allclose(nan_list(got["accuracy"]), accuracy, atol=1e-12)
    np.testing.assert_allclose(nan_list(got["confidence"]), confidence, atol=1e-12)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    gaps = np.array(accuracy[1:]) - np.array(confidence[1:])
    assert gaps.min() < 0 < gaps.max()  # the bins' gaps cancel in a plain sum


def test_error_operating_points_reach_the_target_recall_exactly() -> None:
    """20 wrong pixels, one per bin: each target recall (10, 16, 18, 19 of 20) is reached
    exactly by one threshold, which must flag that many, not one more. Ignore pixels, with
    the highest uncertainty, take no part."""
    rng = np.random.default_rng(8)
    wrong_unc = (rng.choice(np.arange(300, 1000), 20, replace=False) + 0.5) / 1000
    correct_unc = (rng.choice(np.arange(0, 700), 30, replace=False) + 0.5) / 1000
    unc = np.concatenate([wrong_unc, correct_unc, [0.9995, 0.9985]])
    target = np.concatenate([np.ones(20), np.zeros(30), [IGNORE, IGNORE]]).astype(np.int64)
    probs = np.zeros((1, 2, 1, unc.size))
    probs[0, 0] = 1.0  # class 0 everywhere: the class-1 pixels are the wrong ones
    ev = SegmentationEvaluator(2, inputs="probs")
    ev.update(
        torch.tensor(probs, dtype=torch.float32),
        torch.tensor(unc[None, None, None], dtype=torch.float64),
        torch.tensor(target[None, None]),
    )
    points = ev.compute()["uncertainty"]["error_operating_points"]
    edges = np.linspace(0.0, 1.0, 1001)
    for point in points:
        needed = round(point["target_recall"] * 20)
        threshold = max(e for e in edges if np.sum(wrong_unc >= e) >= needed)
        assert point["threshold"] == pytest.approx(threshold, abs=1e-12)
        assert point["recall"] == needed / 20
        assert point["correct_flagged"] == pytest.approx(np.mean(correct_unc >= threshold))


def test_values_on_the_range_ends_are_not_clipped() -> None:
    """lo and hi belong to the range (the first and last bins); only values outside count
    as clipped."""
    unc = torch.tensor([[[[0.0, 1.0, 0.5, 1.0, -0.25, 1.5, 0.0, 0.7]]]])
    target = torch.tensor([[[0, 0, 0, 0, 0, 0, IGNORE, IGNORE]]])
    logits = torch.zeros(1, 2, 1, 8)
    ev = SegmentationEvaluator(2, inputs="logits")
    ev.update(logits, unc, target)
    result = ev.compute()["uncertainty"]
    assert result["num_clipped"] == 2
    assert (result["min"], result["max"]) == (-0.25, 1.5)


def test_a_class_only_predicted_and_a_class_never_predicted() -> None:
    """Class 4 is predicted but never in the ground truth: its mean uncertainty (by
    predicted class) is defined. Class 5 is in the ground truth but never predicted: its
    accuracy is 0 and counts in the mean class accuracy. Four batches, ignore pixels."""
    batches = make_batches(seed=11)
    for logits, _, target in batches:
        target[target == 4] = 0
        logits[:, 5] -= 10.0
    ref = pooled(batches)
    assert (ref["pred"] == 4).any() and (ref["target"] == 5).any()
    assert not (ref["pred"] == 5).any() and not (ref["target"] == 4).any()
    result = evaluate(batches)
    per_class = nan_list(result["uncertainty"]["per_class_mean"])
    expected = [
        ref["unc"][ref["pred"] == k].mean() if (ref["pred"] == k).any() else np.nan
        for k in range(6)
    ]
    np.testing.assert_allclose(per_class, expected, atol=1e-9)
    assert not math.isnan(per_class[4])
    correct = ref["pred"] == ref["target"]
    class_acc = [correct[ref["target"] == k].mean() for k in range(6) if k != 4]
    assert class_acc[-1] == 0.0
    seg = result["segmentation"]
    assert seg["mean_class_accuracy"] == pytest.approx(np.mean(class_acc), abs=1e-12)
    np.testing.assert_allclose(
        nan_list(seg["iou"]), reference_iou(ref["pred"], ref["target"], 6), atol=1e-12
    )


def test_probabilities_a_little_above_one_fall_in_the_last_calibration_bin() -> None:
    """Probabilities within the accepted tolerance above 1 (float round-off of a softmax)
    count in the last ECE bin (0.8, 1], as a confidence of exactly 1 does."""
    rows = np.array([[1.00005, 0.0, 0.0], [0.5, 0.3, 0.2], [0.875, 0.125, 0.0]])
    ev = SegmentationEvaluator(3, inputs="probs", ece_bins=5)
    conf, correct = [], []
    rng = np.random.default_rng(12)
    for _ in range(2):
        kind = rng.integers(0, 3, (1, 4, 5))
        probs = torch.tensor(rows[kind].transpose(0, 3, 1, 2), dtype=torch.float32)
        target = torch.tensor(rng.integers(0, 2, (1, 4, 5)))
        target[0, 0] = IGNORE
        ev.update(probs, None, target)
        valid = (target != IGNORE).numpy()
        conf.append(probs.numpy().max(1).astype(np.float64)[valid])
        correct.append((target.numpy() == 0)[valid])
    conf, correct = np.concatenate(conf), np.concatenate(correct)
    assert (conf > 1).any()
    got = ev.compute()["calibration"]
    last = conf > 0.8
    assert got["count"] == [0, 0, int((conf == 0.5).sum()), 0, int(last.sum())]
    assert got["confidence"][-1] == pytest.approx(conf[last].mean(), abs=1e-12)
    assert got["accuracy"][-1] == pytest.approx(correct[last].mean(), abs=1e-12)


def test_binned_fpr95_of_a_constant_uncertainty_is_read_on_the_bin_segment() -> None:
    """All pixels in one uncertainty bin: the ROC is the straight chance line, so FPR at
    95 % TPR is 0.95 (the evenly-interleaved reading of a bin), not 1 (a step)."""
    ev = SegmentationEvaluator(6, inputs="logits")
    for logits, unc, target in make_batches(seed=13):
        ev.update(logits, torch.full_like(unc, 0.3), target)
    got = ev.compute()["uncertainty"]["misclassification"]
    assert got["auroc"] == 0.5 and got["fpr95"] == pytest.approx(0.95, abs=1e-12)


def test_pavpu_maximum_between_the_plotted_thresholds() -> None:
    """One-pixel patches: accurate ones at uncertainty 0.305, inaccurate ones at 0.315.
    Every patch is classified right for thresholds in (0.305, 0.315], which lies between
    the plotted thresholds 0.30 and 0.32: the maximum is taken on all 1000 edges."""
    ev = SegmentationEvaluator(2, inputs="probs", patch_size=1)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        target = torch.tensor(rng.integers(0, 2, (1, 3, 8)))
        target[0, 0, :2] = IGNORE
        probs = torch.zeros(1, 2, 3, 8)
        probs[:, 0] = 1.0  # class 0 predicted everywhere
        unc = torch.where(target == 0, 0.305, 0.315)[:, None].double()
        unc[0, 0, 0, :2] = 0.999  # ignore pixels: no patch
        ev.update(probs, unc, target)
    pavpu = ev.compute()["uncertainty"]["pavpu"]
    assert pavpu["num_patches"] == 2 * 22
    assert max(pavpu["values"]) < 1.0
    assert pavpu["max"] == 1.0 and pavpu["threshold_at_max"] == pytest.approx(0.306)


def test_uncertainty_extremes_and_clipping_over_several_batches() -> None:
    """The exact min / max are the extremes of all batches' evaluated pixels (the max in
    the first batch, the min in the second), not of the last batch; ignore pixels with more
    extreme values (and outside the range) neither set them nor count as clipped."""
    maps = [[0.2, 1.7, 0.4, 9.0], [-0.3, 0.5, 0.6, -5.0], [0.3, 0.45, 0.5, 8.0]]
    ev = SegmentationEvaluator(2, inputs="logits")
    for values in maps:
        target = torch.tensor([[[0, 1, 0, IGNORE]]])
        ev.update(torch.randn(1, 2, 1, 4), torch.tensor(values).view(1, 1, 1, 4), target)
    unc = ev.compute()["uncertainty"]
    evaluated = np.array([v[:3] for v in maps], dtype=np.float32).astype(np.float64)
    assert (unc["min"], unc["max"]) == (evaluated.min(), evaluated.max())
    assert unc["num_clipped"] == int(((evaluated < 0) | (evaluated > 1)).sum()) == 2


def test_non_finite_uncertainty_at_ignore_pixels_changes_nothing() -> None:
    """Only evaluated pixels take part, in the pAvPU patches too: NaN / inf uncertainty at
    ignore pixels (a padded border) is accepted and every result, over several batches,
    equals that of the same batches with ordinary values there."""
    batches = make_batches(num_batches=3, b=2, c=4, h=9, w=10, seed=21)
    with_holes = [
        (logits, torch.where((target == IGNORE)[:, None], fill, unc), target)
        for (logits, unc, target), fill in zip(batches, (float("nan"), float("inf"), -math.inf))
    ]
    got, expected = evaluate(with_holes), evaluate(batches)
    assert json.dumps(got) == json.dumps(expected)
    pavpu = got["uncertainty"]["pavpu"]
    np.testing.assert_allclose(
        pavpu["values"], reference_pavpu(batches, np.array(pavpu["thresholds"])), atol=1e-12
    )


def test_histograms_of_float32_uncertainty_next_to_bin_edges_match_numpy() -> None:
    """float32 uncertainties at and one ulp either side of every bin edge land in the bin
    their value lies in (numpy's histogram of the same values in float64): a float32
    product (value x num_bins) rounds many of them onto the next edge. Two batches, ignore
    pixels, a 1000-bin histogram read at 50 plot bins and at the error operating points."""
    edges32 = (np.arange(1, 50) / 50).astype(np.float32)
    near = np.concatenate(
        [
            np.nextafter(edges32, np.float32(0)),
            edges32,
            np.nextafter(edges32, np.float32(1)),
        ]
    )
    rng = np.random.default_rng(22)
    ev = SegmentationEvaluator(3, inputs="probs")
    values, wrongs = [], []
    for half in np.array_split(rng.permutation(near), 2):
        n = half.size
        target = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.6, target, (target + 1) % 3)
        target[rng.random(n) < 0.1] = IGNORE
        probs = np.eye(3, dtype=np.float32)[pred].T[None, :, None]  # [1, 3, 1, n]
        ev.update(
            torch.tensor(probs),
            torch.tensor(half).view(1, 1, 1, n),
            torch.tensor(target).view(1, 1, n),
        )
        valid = target != IGNORE
        values.append(half[valid].astype(np.float64))
        wrongs.append((pred != target)[valid])
    unc, wrong = np.concatenate(values), np.concatenate(wrongs)
    got = ev.compute()["uncertainty"]
    for key, mask in (("correct", ~wrong), ("wrong", wrong)):
        assert got["histograms"][key] == np.histogram(unc[mask], 50, (0, 1))[0].tolist()
    for point in got["error_operating_points"]:
        assert point["recall"] == pytest.approx(np.mean(unc[wrong] >= point["threshold"]))
        assert point["correct_flagged"] == pytest.approx(np.mean(unc[~wrong] >= point["threshold"]))


def test_a_float64_uncertainty_is_binned_and_reported_in_float64() -> None:
    """A float64 map was rounded to float32 first: 0.005 + 1e-12 fell into the bin below
    the 0.005 edge, and its reported minimum was 0.004999999888."""
    ev = SegmentationEvaluator(2, inputs="probs", plot_bins=1000)
    value = 0.005 + 1e-12
    probs = torch.tensor([[[[1.0]], [[0.0]]]])  # [1, 2, 1, 1]: class 0
    ev.update(probs, torch.full((1, 1, 1, 1), value, dtype=torch.float64), torch.zeros(1, 1, 1))
    got = ev.compute()["uncertainty"]
    assert got["min"] == value
    assert got["histograms"]["correct"].index(1) == 5  # [0.005, 0.006)


def test_ece_with_many_classes_fills_the_lowest_confidence_bin() -> None:
    """With 20 classes a max probability can be as low as 0.05, inside the first of 15
    bins (0, 1/15]: that bin's accuracy and confidence count like any other's. Two batches,
    ignore pixels, direct formula."""
    rng = np.random.default_rng(23)
    ev = SegmentationEvaluator(20, inputs="logits")
    conf, correct = [], []
    for _ in range(2):
        scale = rng.choice([0.05, 1.0, 3.0], (2, 1, 6, 7))  # near-uniform to confident
        logits = torch.tensor(rng.normal(0, scale, (2, 20, 6, 7)))
        target = torch.tensor(rng.integers(0, 20, (2, 6, 7)))
        target[:, 0] = IGNORE
        ev.update(logits, None, target)
        probs = torch.softmax(logits.double(), 1)
        valid = target != IGNORE
        conf.append(probs.max(1).values[valid].numpy())
        correct.append((probs.argmax(1) == target)[valid].numpy())
    conf, correct = np.concatenate(conf), np.concatenate(correct)
    edges = np.linspace(0, 1, 16)
    first = conf <= edges[1]
    assert first.any() and correct[first].any() and not correct[first].all()
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    got = ev.compute()["calibration"]
    assert got["count"][0] == int(first.sum())
    assert got["accuracy"][0] == pytest.approx(correct[first].mean(), abs=1e-12)
    assert got["ece"] == pytest.approx(ece, abs=1e-6)


def test_bfloat16_probabilities_are_probabilities() -> None:
    """A bf16 softmax (a network run under bfloat16 autocast) sums to 1 only to within
    bf16's resolution: with 19 classes some pixels' sums are 0.27 % off, and the 1e-3
    tolerance refused the batch as "scores are not probabilities" (give the softmax...)
    although it is the softmax. The pixel counts must be those of the bf16 argmax."""
    gen = torch.Generator().manual_seed(0)
    c = 19
    logits = torch.randn(2, c, 32, 32, generator=gen) * 3
    target = torch.randint(0, c, (2, 32, 32), generator=gen)
    target[:, :4] = IGNORE
    probs = logits.to(torch.bfloat16).softmax(dim=1)
    evaluator = SegmentationEvaluator(c, inputs="probs")
    evaluator.update(probs, None, target)
    got = evaluator.compute()
    pred = probs.float().argmax(dim=1).numpy()[target.numpy() != IGNORE]
    labels = target.numpy()[target.numpy() != IGNORE]
    assert got["num_pixels"] == labels.size
    assert got["segmentation"]["pixel_accuracy"] == pytest.approx(np.mean(pred == labels))


def test_float32_scores_that_do_not_sum_to_one_are_not_probabilities() -> None:
    """The sum tolerance grows to the eps of a half-precision input only: float32 scores
    summing to 1.01 (not a softmax) are refused; within 1e-3 they are taken."""
    probs = torch.full((1, 4, 2, 2), 0.25)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    off = probs.clone()
    off[:, 0] += 0.01  # every pixel sums to 1.01
    with pytest.raises(ValueError, match="scores are not probabilities"):
        SegmentationEvaluator(4, inputs="probs").update(off, None, target)
    near = probs.clone()
    near[:, 0] += 5e-4
    evaluator = SegmentationEvaluator(4, inputs="probs")
    evaluator.update(near, None, target)
    assert evaluator.compute()["num_pixels"] == 4


def test_one_image_without_its_batch_axis_is_refused_naming_the_shapes() -> None:
    """One image's [C, H, W] scores and [H, W] target (a batch axis forgotten) failed with
    Python's "not enough values to unpack (expected 4, got 3)"; the message should say
    which shapes the evaluator takes, as it does for every other wrong shape."""
    ev = SegmentationEvaluator(3, inputs="logits")
    with pytest.raises(ValueError, match=r"expected scores \[B, 3, H, W\].*\(3, 4, 4\)"):
        ev.update(torch.randn(3, 4, 4), None, torch.zeros(4, 4, dtype=torch.long))
