"""Image-level OOD flags at deployment: the threshold at a false-alarm rate and the detector
file (`segdistill predict --ood-reference / --ood-detector` is tested in test_predict.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segdistill.defaults import AGGREGATORS, DETECTOR_FILE
from segdistill.errors import ConfigError
from segdistill.ood_detector import ImageOODDetector, check_aggregator, threshold_at_fpr


def brute_force_threshold(scores: np.ndarray, fpr: float) -> float:
    """The smallest candidate t among the scores with share(scores > t) <= fpr, by trying
    every one (the share is counted, not taken from a sorted position)."""
    allowed = int(fpr * len(scores) + 1e-9)
    return min(t for t in scores if np.count_nonzero(scores > t) <= allowed)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.95])
def test_threshold_is_the_smallest_reference_score_within_the_rate(seed, fpr) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    scores = rng.random(n)
    if seed % 2:  # ties: scores on a coarse grid
        scores = np.round(scores * 5) / 5
    threshold = threshold_at_fpr(scores, fpr)
    assert threshold == brute_force_threshold(scores, fpr)
    assert np.mean(scores > threshold) <= fpr
    assert threshold in scores


def test_threshold_edge_cases() -> None:
    assert threshold_at_fpr([0.3, 0.1, 0.2], 0.0) == 0.3  # nothing above the largest
    # 0.29 * 100 is 28.999999999999996 in floats: 29 of 100 may still be flagged.
    scores = np.arange(100.0)
    assert np.count_nonzero(scores > threshold_at_fpr(scores, 0.29)) == 29
    assert threshold_at_fpr([2.0, 2.0, 2.0, 1.0], 0.5) == 2.0  # ties flag fewer, not more
    with pytest.raises(ValueError, match="no reference scores"):
        threshold_at_fpr([], 0.05)
    with pytest.raises(ValueError, match="finite"):
        threshold_at_fpr([0.1, float("nan")], 0.05)
    for fpr in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="false-alarm rate"):
            threshold_at_fpr([0.1], fpr)


def hand_made(**changes: object) -> ImageOODDetector:
    scores = [0.1, 0.4, 0.2, 0.3]
    fields = {
        "aggregator": "mean",
        "threshold": threshold_at_fpr(scores, 0.25),
        "fpr": 0.25,
        "reference_images": len(scores),
        "model": "dudes",
        "weights": "0" * 64,
        "kind": "student",
        "uncertainty_source": "student head (scalar)",
        "ood_source": "student head (scalar)",
        "passes": 1,
        "resize_to": None,
        "reference_scores": scores,
    }
    return ImageOODDetector(**{**fields, **changes})


def test_flags_are_the_scores_strictly_above_the_threshold() -> None:
    detector = hand_made()
    assert detector.threshold == 0.3
    scores = np.array([0.05, 0.3, 0.31, 0.9])
    expected = [False, False, True, True]
    assert detector.flags(scores).tolist() == expected
    assert detector.flags(torch.from_numpy(scores)).tolist() == expected
    assert bool(detector.flags(0.4)) and not bool(detector.flags(0.3))
    maps = torch.stack([torch.full((1, 4, 6), v) for v in scores.tolist()])  # [B, 1, H, W]
    np.testing.assert_allclose(detector.scores(maps).numpy(), scores)


def test_detector_file_round_trip_and_errors(tmp_path) -> None:
    detector = hand_made(resize_to=[64, 128])
    path = tmp_path / DETECTOR_FILE
    detector.save(path)
    assert ImageOODDetector.load(path) == detector
    document = json.loads(path.read_text())

    def broken(**changes: object) -> Path:
        bad = tmp_path / f"bad_{len(list(tmp_path.glob('bad_*')))}.json"
        bad.write_text(json.dumps({**document, **changes}))
        return bad

    cases = [
        (broken(aggregator="p99"), "'aggregator'"),
        (broken(weights=7), "'weights' must be a string"),
        (broken(fpr=1.5), "'fpr'"),
        (broken(threshold="high"), "'threshold'"),
        (broken(passes=True), "'passes'"),
        (broken(reference_scores=[]), "'reference_scores'"),
        (broken(resize_to=[64]), "'resize_to'"),
        (broken(resize_to=[True, False]), "'resize_to'"),
        (broken(reference_scores=["x"] * 100), "got \\['x', .*\\.\\.\\.$"),
        (broken(threshold=document["threshold"] + 1.0), "was edited"),
        (broken(reference_images=document["reference_images"] + 1), "was edited"),
        (broken(extra=1), "unknown keys \\['extra'\\]"),
        (broken(reference_sizes=[[64, 0]]), "'reference_sizes'"),
        (broken(reference_sizes=[64, 128]), "'reference_sizes'"),
        (broken(ood_source=3), "'ood_source' must be null or a string"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            ImageOODDetector.load(bad)
        assert str(bad) in str(error.value)
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "text.json").write_text("not json")
    for name, message in (("list.json", "JSON object"), ("text.json", "JSON"), ("no", "no such")):
        with pytest.raises(ConfigError, match=message):
            ImageOODDetector.load(tmp_path / name)
    with pytest.raises(ConfigError, match="unknown OOD aggregator 'p99'"):
        check_aggregator("p99")


def test_the_detector_says_which_map_its_scores_aggregate() -> None:
    assert hand_made().scored_map == "uncertainty"
    assert hand_made(ood_source=None).scored_map == "uncertainty"  # a file from before
    assert hand_made(ood_source="mean over the classes").scored_map == "mean over the classes"


def test_an_image_of_a_size_the_references_lacked_is_named() -> None:
    detector = hand_made(reference_sizes=[[96, 160], [128, 256]])  # sorted, as fit stores them
    assert detector.other_size((128, 256)) is None and detector.other_size([96, 160]) is None
    message = detector.other_size((64, 128))
    assert message is not None and message.startswith("64x128 images were not among")
    assert "(96x160, 128x256 HxW)" in message
    # Resized to one size for the network, or a file without the record: nothing to say.
    assert hand_made(reference_sizes=[[128, 256]], resize_to=[64, 128]).other_size((1, 1)) is None
    assert hand_made().other_size((64, 128)) is None


def test_a_detector_file_without_reference_sizes_still_loads(tmp_path) -> None:
    path = tmp_path / DETECTOR_FILE
    hand_made(reference_sizes=[[4, 4]]).save(path)
    document = json.loads(path.read_text())
    assert document["reference_sizes"] == [[4, 4]]
    del document["reference_sizes"], document["ood_source"]  # as written before both
    path.write_text(json.dumps(document))
    loaded = ImageOODDetector.load(path)
    assert loaded.reference_sizes is None and loaded.ood_source is None


def test_scores_use_the_detectors_aggregator() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 1, 5, 7))
    for aggregator in AGGREGATORS:
        got = hand_made(aggregator=aggregator).scores(torch.from_numpy(maps)).numpy()
        v = maps.reshape(3, -1)
        expected = {
            "min": v.min(1),
            "mean": v.mean(1),
            "median": np.median(v, 1),
            "max": v.max(1),
            "median_plus_min_over_max": (np.median(v, 1) + v.min(1)) / v.max(1),
        }[aggregator]
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=aggregator)


def test_check_model_refuses_another_number_of_passes_or_other_weights() -> None:
    detector = hand_made()

    def predictor(**changes: object) -> SimpleNamespace:
        fields = {
            "weights": detector.weights,
            "kind": detector.kind,
            "uncertainty_source": detector.uncertainty_source,
            "ood_source": detector.ood_source,
            "passes": detector.passes,
        }
        fields.update(changes)
        weights = fields.pop("weights")
        return SimpleNamespace(fingerprint=lambda: weights, **fields)

    detector.check_model(predictor(), None, "det.json")  # the same predictor: accepted
    for changes, message in (
        ({"passes": 8}, r"passes 1 \(given 8\)"),
        ({"weights": "f" * 64}, r"weights '000000000000\.\.\.' \(given 'ffffffffffff\.\.\.'\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            detector.check_model(predictor(**changes), None, "det.json")


def test_a_nan_score_is_refused_not_silently_unflagged() -> None:
    with pytest.raises(ValueError, match=r"OOD scores \[1\] are NaN"):
        hand_made().flags(np.array([0.1, np.nan, 0.9]))
