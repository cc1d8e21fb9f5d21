"""segdistill evaluate end to end on a tiny SynthStreets tree: metrics.json schema, numbers
against a direct recomputation, OOD / anomaly / teacher sections, figures, bad input."""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from doc_layouts import DOCS, braced_tree, layout_differences
from segdistill import figures
from segdistill.checkpoints import save_weights
from segdistill.cli import main
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec
from segdistill.data.cityscapes import CityscapesDataset
from segdistill.data.folder import FolderDataset
from segdistill.data.labels import TRAIN_ID_COLORS
from segdistill.data.synthstreets import SynthConfig, generate
from segdistill.data.transforms import unnormalize
from segdistill.defaults import AGGREGATORS, RESULTS_FILE, UNCERTAINTY_VMAX
from segdistill.errors import CheckpointError, ConfigError, DataError
from segdistill.evaluate import (
    METRICS_FILE,
    SAMPLE_MAX_WIDTH,
    ModelAccumulators,
    SampleSet,
    _model_figures,
    evaluate,
    find_splits,
    format_summary,
    main_reference,
    ood_references,
    ood_results,
    select_splits,
    summary_split,
)
from segdistill.models import build_segmenter
from segdistill.output_paths import held_folder
from segdistill.predictor import PER_CLASS_MEAN, PER_CLASS_OOD_SOURCE, Prediction, load_predictor

TINY = {"width": 0.125}
SPLITS = ["test", "night", "anomaly"]


def save_run(run_dir: Path, head: str | None, classes: int = 19) -> None:
    config = ModelConfig(encoder_options=TINY, uncertainty_head=head)
    model = build_segmenter(
        "deeplabv3plus", "resnet18", classes, uncertainty_head=head, encoder_options=TINY
    )
    save_weights(run_dir / "checkpoints" / "best.safetensors", model, config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Data (3 test images at 32x64 with night and anomaly copies), a 2-member ensemble and
    a DUDES student, evaluated once with figures."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    config = SynthConfig(size=(32, 64), train=0, val=0, test=3, shifts=("night", "anomaly"))
    generate(data, config, workers=1, progress=False)
    torch.manual_seed(0)
    for i in range(2):
        save_run(root / "ens" / f"member_{i}", None)
    manifest = {"members": [{"checkpoint": f"member_{i}"} for i in range(2)]}
    (root / "ens" / "manifest.json").write_text(json.dumps(manifest))
    save_run(root / "dudes", "scalar")
    results = evaluate(
        [root / "ens", root / "dudes"],
        data,
        batch_size=2,
        out_dir=root / "out",
        num_samples=2,
        progress=False,
        # The recomputation below runs the predictors on the CPU. On a GPU machine the
        # default device would be CUDA, whose TF32 convolutions moved the Pearson r by
        # 8e-5 (seen on an H200), beyond the 1e-5 compared here.
        device="cpu",
    )
    return {"root": root, "data": data, "results": results}


def test_finds_test_and_shifted_splits(setup: dict[str, Any]) -> None:
    found = find_splits(setup["data"])
    assert list(found) == SPLITS
    assert found["anomaly"].anomaly and not found["night"].anomaly
    assert setup["results"]["data"]["splits"] == SPLITS


def test_metrics_json_schema(setup: dict[str, Any]) -> None:
    root = setup["root"]
    for name, kind, members in (("ens", "ensemble", 2), ("dudes", "student", 1)):
        model = json.loads((root / name / METRICS_FILE).read_text())
        assert model["name"] == name and model["kind"] == kind and model["members"] == members
        assert model["parameters"] > 0 and model["uncertainty_source"]
        assert set(model["splits"]) == set(SPLITS)
        assert model["splits"]["test"]["num_images"] == 3
        assert set(model["ood"]["sets"]) == {"night"}  # anomaly is judged per pixel
        night = model["ood"]["sets"]["night"]
        assert set(night["by_aggregator"]) == set(AGGREGATORS)
        assert night["best_aggregator"] in AGGREGATORS
        assert {"auroc", "aupr", "fpr95", "roc"} <= set(night["by_aggregator"]["mean"])
        assert model["anomaly"]["split"] == "anomaly"
        assert model["anomaly"]["num_anomaly_pixels"] > 0
        assert 0 <= model["anomaly"]["ap"] <= 1
    combined = json.loads((root / "out" / RESULTS_FILE).read_text())
    assert [m["name"] for m in combined["models"]] == ["ens", "dudes"]
    assert combined["settings"] == {
        "device": "cpu",
        "channels_last": False,
        "batch_size": 2,
        "max_images": None,
        "torch": torch.__version__,
    }
    assert combined["data"]["class_names"][0] == "road"


def _documented_metrics_layout() -> dict:
    """The "metrics.json (one model)" block of docs/evaluation.md as a key tree: one
    entry per line that starts in the first column ("name, kind" two)."""
    text = (DOCS / "evaluation.md").read_text()
    start = text.index("```", text.index("### metrics.json (one model)")) + 3
    block = text[start : text.index("```", start)]
    tree: dict = {}
    for entry in re.split(r"\n(?=\S)", block.strip()):
        names, description = re.split(r"\s{2,}", entry, maxsplit=1)
        value = braced_tree(description) if "{" in description else None
        tree.update(dict.fromkeys(names.split(", "), value))
    return tree


def test_the_documented_metrics_json_layout_is_what_evaluate_writes(
    setup: dict[str, Any],
) -> None:
    """docs/evaluation.md writes out metrics.json by hand: every key it names at every
    level is one a student's and an ensemble's file holds, and none is missing
    (`splits[split]` is checked against compute() in test_metrics_segmentation.py)."""
    documented = _documented_metrics_layout()
    documented["splits"] = None
    assert documented["ood"]["sets"]["*"]["by_aggregator"]["*"]["roc"] == dict.fromkeys(
        ["fpr", "tpr", "thresholds"]
    )  # the parser reads the nested levels
    for name in ("ens", "dudes"):
        written = json.loads((setup["root"] / name / METRICS_FILE).read_text())
        assert written["vs_teacher"] is not None or name == "ens"
        assert layout_differences(documented, written) == [], name


def test_the_documented_results_json_layout_is_what_evaluate_out_writes(
    setup: dict[str, Any],
) -> None:
    """docs/evaluation.md gives `--out DIR`'s results.json inline: the same keys, at the
    top and in `data` and `settings`; each model is its metrics.json."""
    text = (DOCS / "evaluation.md").read_text()
    start = text.index('`results.json` (`{"schema": "segdistill.results/1"')
    inline = text[start : text.index("}`)", start) + 2].split("(`", 1)[1]
    inline = re.sub(r'"(\w+)":', r"\1", inline.replace("<metrics.json of each model>", ""))
    documented = braced_tree(inline)
    written = json.loads((setup["root"] / "out" / RESULTS_FILE).read_text())
    assert set(documented["data"]) >= {"root", "references"}  # the parser reads the levels
    documented["figures"] = None  # "{...}": not written out
    assert layout_differences(documented, written) == []
    for name, model in zip(("ens", "dudes"), written["models"], strict=True):
        own = json.loads((setup["root"] / name / METRICS_FILE).read_text())
        assert set(model) == set(own)


def test_a_report_warns_when_the_weights_changed_after_the_evaluation(
    setup: dict[str, Any], tmp_path: Path, capsys
) -> None:
    """metrics.json named only its source: a run trained on (or resumed) after `segdistill
    evaluate` showed the old figures in `segdistill report` without a word."""
    root = setup["root"]
    model = json.loads((root / "dudes" / METRICS_FILE).read_text())
    assert model["weights"] == load_predictor(root / "dudes").fingerprint()
    run = tmp_path / "dudes"
    shutil.copytree(root / "dudes", run)
    metrics = {**model, "source": str(run)}
    (run / METRICS_FILE).write_text(json.dumps(metrics))
    assert main(["report", str(run), "--out", str(tmp_path / "a.html")]) == 0
    assert "warning" not in capsys.readouterr().err
    torch.manual_seed(1)
    save_run(run, "scalar")  # trained on: other weights at the same place
    assert main(["report", str(run), "--out", str(tmp_path / "b.html")]) == 0
    err = capsys.readouterr().err
    assert f"warning: dudes: its metrics ({run / METRICS_FILE}) were measured on other " in err
    assert "run `segdistill evaluate` on it again" in err


def test_a_run_still_training_is_evaluated_with_a_notice(
    setup: dict[str, Any], tmp_path: Path, capsys
) -> None:
    """Evaluating a run directory while its training goes on gave the mid-training figures
    without a word."""
    run = tmp_path / "dudes"
    shutil.copytree(setup["root"] / "dudes", run)
    options = {"out_dir": tmp_path / "out", "write_homes": False, "make_figures": False}
    with held_folder(run):  # as `segdistill train` holds its run directory
        evaluate([run], setup["data"], ["test"], progress=False, device="cpu", **options)
    assert f"notice: {run} is still being written by a run (pid " in capsys.readouterr().err
    evaluate([run], setup["data"], ["test"], progress=False, device="cpu", **options)
    assert "still being written" not in capsys.readouterr().err  # the lock file stays


def test_numbers_match_a_direct_recomputation(setup: dict[str, Any]) -> None:
    """mIoU, pixel accuracy, OOD AUROC and the teacher pairing of the student, from the
    predictors run image by image here."""
    root, data = setup["root"], setup["data"]
    student = json.loads((root / "dudes" / METRICS_FILE).read_text())
    predictor, teacher = load_predictor(root / "dudes"), load_predictor(root / "ens")
    scores: dict[str, list[float]] = {"test": [], "night": []}
    confusion = np.zeros((19, 19), np.int64)
    pairs = []
    for split, tree in (("test", data), ("night", data / "shifts" / "night")):
        for sample in CityscapesDataset(tree, "test"):
            image, label = sample["image"][None], sample["label"].numpy()
            prediction = predictor.predict(image)
            unc = prediction.uncertainty[0, 0].numpy()
            scores[split].append(float(unc.mean()))
            if split == "test":
                valid = label != 255
                pred = prediction.probs[0].argmax(0).numpy()
                np.add.at(confusion, (label[valid], pred[valid]), 1)
                teacher_unc = teacher.predict(image).uncertainty[0, 0].numpy()
                pairs.append(np.stack([unc[valid], teacher_unc[valid]]))
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    miou = np.mean(tp[union > 0] / union[union > 0])
    test = student["splits"]["test"]["segmentation"]
    assert test["miou"] == pytest.approx(miou, abs=1e-12)
    assert test["pixel_accuracy"] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-12)
    labels = [0] * len(scores["test"]) + [1] * len(scores["night"])
    auroc = roc_auc_score(labels, scores["test"] + scores["night"])
    ood = student["ood"]["sets"]["night"]["by_aggregator"]["mean"]
    assert ood["auroc"] == pytest.approx(auroc, abs=1e-9)
    stacked = np.concatenate(pairs, axis=1)
    paired = student["vs_teacher"]["splits"]["test"]["paired"]
    assert paired["pearson"] == pytest.approx(np.corrcoef(stacked)[0, 1], abs=1e-5)
    assert paired["num_pixels"] == stacked.shape[1]


def test_ood_results_score_each_set_against_its_own_clean_split_per_aggregator() -> None:
    """Each set's images (positives) against its own clean split's (negatives), with the
    same aggregator on both sides; the best aggregator is the one of the highest AUROC; a
    clean split is no set. AUROC and AP by scikit-learn on the same scores."""
    rng = np.random.default_rng(0)
    # Each aggregator's OOD images are shifted by its own amount: every AUROC differs.
    shifts = dict(zip(AGGREGATORS, (0.0, 0.15, 0.3, 0.6, -0.3)))
    sizes = {"test": 6, "val": 5, "fog_0.02": 4, "rain": 7}
    scores = {
        split: {
            agg: (rng.random(n) + (0.0 if split in ("test", "val") else shifts[agg])).tolist()
            for agg in AGGREGATORS
        }
        for split, n in sizes.items()
    }
    references = {"fog_0.02": "test", "rain": "val"}
    result = ood_results(scores, references)
    assert result is not None and result["image_scores"] == scores
    assert set(result["sets"]) == set(references)
    for name, reference in references.items():
        entry = result["sets"][name]
        assert entry["reference"] == reference
        expected = {}
        for agg in AGGREGATORS:
            inliers, outliers = scores[reference][agg], scores[name][agg]
            labels = [0] * len(inliers) + [1] * len(outliers)
            expected[agg] = roc_auc_score(labels, [*inliers, *outliers])
            got = entry["by_aggregator"][agg]
            assert got["auroc"] == pytest.approx(expected[agg], abs=1e-12)
            ap = average_precision_score(labels, [*inliers, *outliers])
            assert got["aupr"] == pytest.approx(ap, abs=1e-12)
        assert len(set(expected.values())) == len(AGGREGATORS)  # a unique best
        assert entry["best_aggregator"] == max(expected, key=expected.__getitem__)
    # A set whose clean split has no scores is left out; none left: no OOD section.
    partial = ood_results(scores, {"fog_0.02": "test", "rain": "train"})
    assert partial is not None and set(partial["sets"]) == {"fog_0.02"}
    assert ood_results(scores, {"rain": "train"}) is None


def test_a_per_class_student_is_scored_on_holders_eq_8_map(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """Image-level OOD of a Holder & Shafique student aggregates eq. 8's map (the mean of
    its per-class std over the classes, their 5.3), recomputed here image by image."""
    torch.manual_seed(0)
    save_run(tmp_path / "holder", "per_class")
    results = evaluate(
        [tmp_path / "holder"],
        setup["data"],
        splits=["test", "night"],
        batch_size=2,
        progress=False,
        make_figures=False,
        device="cpu",
    )
    (model,) = results["models"]
    assert model["ood_source"] == PER_CLASS_OOD_SOURCE
    network = load_predictor(tmp_path / "holder").model
    medians: dict[str, list[float]] = {"test": [], "night": []}
    for split, tree in (("test", setup["data"]), ("night", setup["data"] / "shifts" / "night")):
        for sample in CityscapesDataset(tree, "test"):
            with torch.no_grad():
                per_class = network(sample["image"][None]).uncertainty[0].numpy()
            medians[split].append(float(np.median(per_class.mean(axis=0))))
    labels = [0] * len(medians["test"]) + [1] * len(medians["night"])
    auroc = roc_auc_score(labels, medians["test"] + medians["night"])
    ood = model["ood"]["sets"]["night"]["by_aggregator"]["median"]
    assert ood["auroc"] == pytest.approx(auroc, abs=1e-9)
    scores = model["ood"]["image_scores"]["night"]["median"]
    np.testing.assert_allclose(scores, medians["night"], rtol=1e-5)


def test_teacher_differences(setup: dict[str, Any]) -> None:
    models = {m["name"]: m for m in setup["results"]["models"]}
    student, teacher = models["dudes"], models["ens"]
    assert teacher["vs_teacher"] is None
    comparison = student["vs_teacher"]
    assert comparison["teacher"] == "ens"
    s = student["splits"]["test"]["uncertainty"]["per_class_mean"]
    t = teacher["splits"]["test"]["uncertainty"]["per_class_mean"]
    diffs = comparison["splits"]["test"]["per_class_mean_uncertainty"]
    for a, b, d in zip(s, t, diffs):
        assert d is None if a is None or b is None else d == pytest.approx(a - b)
    # Every difference is student - teacher, on every split, of the same quantity.
    for split in SPLITS:
        differences = comparison["splits"][split]
        for key, section, quantity in (
            ("class_mean_uncertainty", "uncertainty", "class_mean"),
            ("pixel_mean_uncertainty", "uncertainty", "pixel_mean"),
            ("miou", "segmentation", "miou"),
            ("iou", "segmentation", "iou"),
        ):
            mine = np.array(student["splits"][split][section][quantity], dtype=float)
            theirs = np.array(teacher["splits"][split][section][quantity], dtype=float)
            expected = mine - theirs
            got = np.array(differences[key], dtype=float)
            np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
            assert np.isfinite(expected).any()


def test_figures_written(setup: dict[str, Any]) -> None:
    root = setup["root"]
    expected = {
        "reliability",
        "misclassification_roc",
        "uncertainty_histograms",
        "miou_vs_removed",
        "iou_after_removal",
        "teacher_student_hist2d",
        "ood_roc",
        "ood_scores",
        "per_class_uncertainty",
        "anomaly_histograms",
        "samples_test",
        "samples_sets",
    }
    student = json.loads((root / "dudes" / METRICS_FILE).read_text())
    assert expected <= set(student["figures"])
    for relative in student["figures"].values():
        assert (root / "dudes" / relative).stat().st_size > 1000
    combined = json.loads((root / "out" / RESULTS_FILE).read_text())
    for relative in combined["figures"].values():
        assert (root / "out" / relative).stat().st_size > 1000
    for model in combined["models"]:
        for relative in model["figures"].values():
            assert (root / "out" / relative).is_file()


def test_summary_table(setup: dict[str, Any]) -> None:
    text = format_summary(setup["results"]["models"])
    lines = text.splitlines()
    assert "mIoU" in lines[1] and "anomaly AP" in lines[1]
    assert any(line.startswith("dudes") for line in lines)
    assert "night" in text
    # The probably-wrong operating point at 90 % of the errors, as metrics.json holds it.
    start = lines.index(next(line for line in lines if line.startswith("flagging pixels")))
    for model in setup["results"]["models"]:
        points = model["splits"]["test"]["uncertainty"]["error_operating_points"]
        point = next(p for p in points if p["target_recall"] == 0.9)
        row = next(line for line in lines[start:] if line.startswith(model["name"] + " "))
        shares = [point[k] for k in ("flagged", "correct_flagged", "kept_accuracy")]
        expected = ["-" if v is None else f"{v:.1%}" for v in shares]
        assert row.split()[1:] == [f"{point['threshold']:.4g}", *expected]


def test_a_threshold_below_the_bins_is_not_shown_as_zero(setup: dict[str, Any]) -> None:
    """A barely trained ensemble's pred_std lies in the lowest of the 1000 bins where the
    errors are: the table said `--distrust-above 0`, which flags every pixel."""
    model = copy.deepcopy(setup["results"]["models"][0])
    points = model["splits"]["test"]["uncertainty"]["error_operating_points"]
    for point in points:
        point.update(threshold=0.0, flagged=1.0, correct_flagged=1.0, kept_accuracy=None)
    lines = format_summary([model]).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("flagging pixels")))
    row = next(line for line in lines[start:] if line.startswith(model["name"] + " "))
    assert row.split()[1:3] == ["<", "0.001"] and "finer than the metrics' bins" in row


def test_the_summary_shows_the_split_evaluated_when_it_is_not_test(setup: dict[str, Any]) -> None:
    # As `segdistill evaluate --splits val` (the paper configs evaluate Cityscapes val).
    models = [
        {**model, "splits": {"val": model["splits"]["test"]}}
        for model in setup["results"]["models"]
    ]
    lines = format_summary(models).splitlines()
    assert lines[0] == "metrics on 'val':"
    miou = models[-1]["splits"]["val"]["segmentation"]["miou"]
    assert f"{miou:.4f}" in next(line for line in lines if line.startswith("dudes"))
    assert any(line.startswith("flagging pixels as probably wrong on 'val'") for line in lines)


def test_cli_prints_the_summary(setup: dict[str, Any], tmp_path: Path, capsys) -> None:
    """A loose checkpoint (outside a run directory) writes only into --out."""
    loose = tmp_path / "student.safetensors"
    shutil.copyfile(setup["root"] / "dudes" / "checkpoints" / "best.safetensors", loose)
    code = main(
        [
            "evaluate",
            str(loose),
            "--data",
            str(setup["data"]),
            "--splits",
            "test,night",
            "--max-images",
            "1",
            "--out",
            str(tmp_path),
            "--workers",
            "0",
            "--no-figures",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "mIoU" in out and "OOD AUROC" in out
    result = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert result["models"][0]["name"] == "student"
    assert result["models"][0]["splits"]["test"]["num_images"] == 1
    assert result["settings"]["max_images"] == 1
    assert sorted(tmp_path.iterdir()) == sorted([loose, tmp_path / RESULTS_FILE])


def test_class_count_mismatch(setup: dict[str, Any], tmp_path: Path) -> None:
    save_run(tmp_path / "five", None, classes=5)
    with pytest.raises(CheckpointError, match=r"best.safetensors predicts 5 classes .* has 19"):
        evaluate([tmp_path / "five"], setup["data"], progress=False)


def test_bad_data_and_splits(setup: dict[str, Any], tmp_path: Path) -> None:
    run = setup["root"] / "dudes"
    with pytest.raises(DataError, match=r"'fog_0.02' not found .* available: test, night, anomaly"):
        evaluate([run], setup["data"], ["test", "fog_0.02"], progress=False)
    (tmp_path / "empty" / "leftImg8bit" / "test" / "city").mkdir(parents=True)
    # A split folder without images is no split (cityscapes.split_folders).
    with pytest.raises(
        DataError, match=r"no images under .*empty: expected .*/leftImg8bit/<split>/"
    ):
        evaluate([run], tmp_path / "empty", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        evaluate([run], tmp_path / "nowhere", progress=False)


def test_bad_settings_and_models_of_one_name(setup: dict[str, Any], tmp_path: Path) -> None:
    run = setup["root"] / "dudes"
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        evaluate([run], setup["data"], batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="max_images must be >= 1, got 0"):
        evaluate([run], setup["data"], max_images=0, progress=False)
    # The same run twice (another spelling too) was evaluated twice, as dudes and dudes_2.
    respelled = run.parent / ".." / run.parent.name / run.name
    with pytest.raises(ConfigError, match=f"models given more than once: {run.resolve()}; give"):
        evaluate([run, respelled], setup["data"], progress=False)
    # Two runs called "dudes" (another folder's): the second is reported as dudes_2.
    shutil.copytree(run, tmp_path / "dudes")
    results = evaluate(
        [run, tmp_path / "dudes"],
        setup["data"],
        ["test"],
        out_dir=tmp_path / "out",
        write_homes=False,
        make_figures=False,
        progress=False,
        device="cpu",
    )
    first, second = results["models"]
    assert (first["name"], second["name"]) == ("dudes", "dudes_2")
    assert first["splits"]["test"]["segmentation"] == second["splits"]["test"]["segmentation"]


def test_max_images_evaluates_the_first_images_of_every_split(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """--max-images N: the first N images of each split (the same for every model), whose
    image scores are those of the full evaluation's first N images."""
    full = {m["name"]: m for m in setup["results"]["models"]}
    results = evaluate(
        [setup["root"] / "ens", setup["root"] / "dudes"],
        setup["data"],
        ["test", "night"],
        batch_size=2,
        out_dir=tmp_path / "out",
        write_homes=False,
        max_images=2,
        make_figures=False,
        progress=False,
        device="cpu",
    )
    for model in results["models"]:
        for split in ("test", "night"):
            assert model["splits"][split]["num_images"] == 2
            for agg in AGGREGATORS:
                got = model["ood"]["image_scores"][split][agg]
                expected = full[model["name"]]["ood"]["image_scores"][split][agg][:2]
                np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_each_models_metrics_go_to_its_own_directory_in_the_order_given(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """A student given before its teacher: the teacher still runs first, but each
    directory's metrics.json and each entry of results.json is of its own model."""
    for name in ("ens", "dudes"):
        shutil.copytree(setup["root"] / name, tmp_path / name)
    results = evaluate(
        [tmp_path / "dudes", tmp_path / "ens"],
        setup["data"],
        ["test"],
        out_dir=tmp_path / "out",
        make_figures=False,
        progress=False,
        device="cpu",
    )
    assert [(m["name"], m["kind"]) for m in results["models"]] == [
        ("dudes", "student"),
        ("ens", "ensemble"),
    ]
    full = {m["name"]: m for m in setup["results"]["models"]}
    for name in ("ens", "dudes"):
        written = json.loads((tmp_path / name / METRICS_FILE).read_text())
        assert written["name"] == name
        assert written["weights"] == load_predictor(tmp_path / name).fingerprint()
        expected = full[name]["splits"]["test"]["segmentation"]["miou"]
        assert written["splits"]["test"]["segmentation"]["miou"] == pytest.approx(expected)
    assert results["models"][0]["vs_teacher"]["teacher"] == "ens"


def test_run_without_checkpoints(setup: dict[str, Any], tmp_path: Path, capsys) -> None:
    (tmp_path / "run").mkdir()
    code = main(["evaluate", str(tmp_path / "run"), "--data", str(setup["data"])])
    assert code == 2
    assert "is neither a run directory" in capsys.readouterr().err


def test_the_evaluate_command_passes_each_option_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    """Every option reaches `evaluate` (one dropped or inverted changes the numbers or the
    files without a word), with the defaults its help and docs/evaluation.md give."""
    import segdistill.evaluate as evaluation

    calls = []

    def fake_evaluate(sources: list, data_root: Path, splits: Any, **options: Any) -> dict:
        calls.append((sources, data_root, splits, options))
        return {"models": [], "files": ["m/metrics.json"]}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "format_summary", lambda models: "summary")
    assert main(["evaluate", "a", "b", "--data", "d"]) == 0
    assert calls.pop() == (
        [Path("a"), Path("b")], Path("d"), None,
        {"batch_size": 4, "out_dir": None, "max_images": None, "num_samples": 3,
         "mc_samples": 8, "device": None, "channels_last": False, "num_workers": 2,
         "make_figures": True},
    )  # fmt: skip
    assert capsys.readouterr().out == "summary\n\nwrote m/metrics.json\n"
    out = tmp_path / "out"
    argv = ["evaluate", "a", "--data", "d", "--splits", " test, fog_0.02 ,", "--batch-size", "3",
            "--out", str(out), "--num-samples", "0", "--max-images", "5", "--mc-samples", "2",
            "--device", "cpu", "--workers", "0", "--channels-last", "--no-figures"]  # fmt: skip
    assert main(argv) == 0
    assert calls.pop() == (
        [Path("a")], Path("d"), ["test", "fog_0.02"],
        {"batch_size": 3, "out_dir": out, "max_images": 5, "num_samples": 0, "mc_samples": 2,
         "device": "cpu", "channels_last": True, "num_workers": 0, "make_figures": False},
    )  # fmt: skip


def test_channels_last_gives_the_same_metrics(setup: dict[str, Any], tmp_path: Path) -> None:
    root = setup["root"]
    sources = [root / "ens", root / "dudes"]
    settings = {"batch_size": 2, "device": "cpu", "progress": False, "make_figures": False}
    settings |= {"write_homes": False}  # the other tests read the models' own metrics.json
    plain = evaluate(sources, setup["data"], ["test"], out_dir=tmp_path / "a", **settings)
    predictors = [load_predictor(source) for source in sources]
    nhwc = evaluate(
        predictors, setup["data"], ["test"], out_dir=tmp_path / "b", channels_last=True, **settings
    )
    assert all(p.channels_last for p in predictors)
    for left, right in zip(plain["models"], nhwc["models"]):
        a, b = left["splits"]["test"], right["splits"]["test"]
        assert a["segmentation"]["miou"] == b["segmentation"]["miou"]
        assert a["uncertainty"]["misclassification"]["auroc"] == pytest.approx(
            b["uncertainty"]["misclassification"]["auroc"], abs=1e-4
        )
        assert a["uncertainty"]["pixel_mean"] == pytest.approx(
            b["uncertainty"]["pixel_mean"], rel=1e-4
        )


def test_iou_after_removal_draws_each_models_kept_iou(setup: dict[str, Any]) -> None:
    models = setup["results"]["models"]
    figure = figures.iou_after_removal(models, "test", fraction=0.5)
    (ax,) = figure.axes
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(len(models), -1)
    for drawn, model in zip(heights, models):
        curve = model["splits"]["test"]["uncertainty"]["miou_vs_removed"]
        kept = curve["iou"][curve["removed_fraction"].index(0.5)]
        expected = np.array([np.nan if v is None else v for v in kept])
        np.testing.assert_array_equal(drawn, expected)
    assert figures.iou_after_removal(models, "test", fraction=0.55) is None


def test_sample_predictions_draw_every_model_on_one_fixed_scale() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (3, 8, 16))
    labels[1, 0, :5] = 255
    predictions = rng.integers(0, 3, (3, 8, 16))
    names = ["fog_0.02", "aachen_000000_000019", "c_3"]
    classes = ["road", "car", "sky", "wall", "fence"]

    def draw(uncertainty: np.ndarray) -> Any:
        return figures.sample_predictions(
            names,
            images,
            labels,
            predictions,
            uncertainty,
            title="samples",
            uncertainty_source="1 - max softmax",
            class_names=classes,
        )

    # Maps of different ranges (as models of different measures or confidence): one
    # scale, 0..UNCERTAINTY_VMAX as `segdistill predict` draws, whatever the values.
    for scale in (0.05, 3.0):
        uncertainty = rng.random((3, 8, 16)) * scale
        figure = draw(uncertainty)
        *panels, bar = figure.axes
        assert len(panels) == 15
        for r in range(3):
            accuracy, unc = panels[5 * r + 3].images[0], panels[5 * r + 4].images[0]
            drawn_classes = panels[5 * r + 2].images[0].get_array()
            np.testing.assert_array_equal(drawn_classes, TRAIN_ID_COLORS[predictions[r]])
            expected = np.where(predictions[r] != labels[r], 255, 0)
            expected[labels[r] == 255] = 128
            np.testing.assert_array_equal(accuracy.get_array()[..., 0], expected)
            np.testing.assert_array_equal(unc.get_array(), uncertainty[r])
            assert unc.get_clim() == pytest.approx((0.0, UNCERTAINTY_VMAX))
        # A set's name stays whole; a long image stem breaks at its first underscore.
        rows = [panels[5 * r].get_ylabel() for r in range(3)]
        assert rows == ["fog_0.02", "aachen\n000000_000019", "c_3"]
        assert bar.get_xlim() == pytest.approx((0.0, UNCERTAINTY_VMAX))
        # The colour bar names the measure and the scale.
        assert bar.get_xlabel() == (
            "uncertainty: 1 - max softmax\nfixed scale 0 to 0.5, higher saturates"
        )
    # The class legend: the classes of labels and predictions (ids 0-3), then void.
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [*classes[:4], "void / ignore"]
    # The photographs' figure is saved at the lighter SAMPLE_DPI (below the others' 110).
    saved = Image.open(io.BytesIO(figures.png_bytes(figure)))
    assert saved.width == int(figure.get_figwidth() * figures.SAMPLE_DPI)
    assert figures.SAMPLE_DPI < 110


def test_a_row_label_breaks_only_past_twelve_characters() -> None:
    """Twelve characters fit beside a row; a longer name breaks at its first underscore."""
    assert figures._row_label("city_0000001") == "city_0000001"  # 12: kept whole
    assert figures._row_label("city_00000001") == "city\n00000001"  # 13: broken once
    assert figures._row_label("a_b_c_d_e_f_g") == "a\nb_c_d_e_f_g"


def test_sample_figures_name_each_models_measure(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate draws each model's samples with its own uncertainty measure, classes,
    class maps and uncertainty maps."""
    drawn: list[dict[str, Any]] = []
    original = figures.sample_predictions

    def record(*args: Any, **kwargs: Any) -> Any:
        drawn.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(figures, "sample_predictions", record)
    monkeypatch.setattr(figures, "model_figures", lambda models, slots: iter(()))
    samples = SampleSet("test", TRAIN_ID_COLORS, 255, names=["x"])
    samples.images = [np.zeros((8, 16, 3), np.uint8)]
    samples.labels = [np.zeros((8, 16), np.int64)]
    for k, model in enumerate(setup["results"]["models"]):
        samples.predictions[model["name"]] = [np.full((8, 16), k, np.uint8)]
        samples.uncertainty[model["name"]] = [np.full((8, 16), 0.1 * (k + 1), np.float32)]
    for model in setup["results"]["models"]:
        written = _model_figures([model], [0], [samples], tmp_path / model["name"])
        assert written["samples_test"].is_file()
        assert drawn[-1]["predictions"] == samples.predictions[model["name"]]
        assert drawn[-1]["uncertainty"] == samples.uncertainty[model["name"]]
        assert drawn[-1]["uncertainty_source"] == model["uncertainty_source"]
        assert drawn[-1]["class_names"] == model["class_names"]
    assert {d["uncertainty_source"] for d in drawn} == {
        "ensemble pred_std",
        "student head (scalar)",
    }


def test_miou_vs_removed_says_how_many_classes_a_point_averages(setup: dict[str, Any]) -> None:
    model = copy.deepcopy(setup["results"]["models"][-1])
    curve = model["splits"]["test"]["uncertainty"]["miou_vs_removed"]
    curve["iou"] = [[0.5] * 19 for _ in curve["removed_fraction"]]
    curve["iou"][-1][:10] = [None] * 10  # the last point averages 9 of the 19 classes
    curve["miou"] = [0.5 for _ in curve["removed_fraction"]]
    (ax,) = figures.miou_vs_removed([model], "test").axes
    marks = [t for t in ax.texts if "/" in t.get_text() and not t.get_text().startswith("n/C")]
    assert [(m.get_text(), m.xy) for m in marks] == [
        ("9/19", (100 * curve["removed_fraction"][-1], 0.5))
    ]
    assert "mean over the classes present" in ax.get_ylabel()
    assert any(t.get_text().startswith("n/C: only n of the C classes") for t in ax.texts)
    # A class the set lacks altogether (absent at 0 % removed too) counts at no point: C is
    # 18 and only the last point is labelled, not every one "18/19".
    for row in curve["iou"]:
        row[18] = None
    (ax,) = figures.miou_vs_removed([model], "test").axes
    marks = [t for t in ax.texts if "/" in t.get_text() and not t.get_text().startswith("n/C")]
    assert [m.get_text() for m in marks] == ["8/18"]


def test_hist2d_titles_say_r_is_over_all_pixels(setup: dict[str, Any]) -> None:
    student = next(m for m in setup["results"]["models"] if m.get("vs_teacher"))
    figure = figures.teacher_student_hist2d([student], "test")
    r = student["vs_teacher"]["splits"]["test"]["paired"]["pearson"]
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [
        f"dudes (student): {group} pixels\nPearson r over all pixels = {r:.3f}"
        for group in ("correct", "wrong")
    ]
    # Correct vs wrong in blue and orange, not green and red.
    meshes = [ax.collections[0] for ax in figure.axes if ax.get_title()]  # not the bars
    assert [mesh.get_cmap().name for mesh in meshes] == ["Blues", "Oranges"]


def test_legends_name_roles_and_measures_and_stay_outside(setup: dict[str, Any]) -> None:
    teacher, student = setup["results"]["models"]
    # An experiment gives each model a role; a kind that repeats the name is left out.
    roles = [{**teacher, "role": "teacher"}, {**student, "name": "kd", "role": "student"}]
    plain = [{**teacher, "name": "ensemble"}, student]
    legends = {
        "roles": figures.miou_vs_removed(roles, "test").axes[0].get_legend(),
        "plain": figures.miou_vs_removed(plain, "test").axes[0].get_legend(),
        "measures": figures.per_class_uncertainty(roles, "test").axes[0].get_legend(),
    }
    texts = {k: [t.get_text() for t in v.get_texts()] for k, v in legends.items()}
    assert texts["roles"] == ["ens (teacher)", "kd (student)"]
    assert texts["plain"] == ["ensemble", "dudes (student)"]
    assert texts["measures"] == ["ens (ensemble pred_std)", "kd (student head (scalar))"]
    # Many models (seeds): the legend sits beside the axes, inside the figure.
    many = [{**student, "name": f"dudes-s{k}"} for k in range(31)]
    for figure in (
        figures.reliability_diagram(many, "test"),
        figures.misclassification_roc(many, "test"),
        figures.miou_vs_removed(many, "test"),
        figures.per_class_uncertainty(many, "test"),
    ):
        (ax,) = figure.axes
        figure.canvas.draw()
        box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert box.x0 >= axes_box.x1
        assert box.x1 <= figure.bbox.x1 and box.y0 >= figure.bbox.y0


def test_model_styles_are_colour_blind_safe_and_distinct() -> None:
    # Okabe-Ito: no tab10 red / green pair; past 8 models the line style and hatch change.
    colors = [figures.model_color(i) for i in range(8)]
    assert len(set(colors)) == 8 and not {"#2ca02c", "#d62728"} & set(colors)
    styles = {tuple(sorted(figures.model_line(i).items())) for i in range(32)}
    bars = {tuple(sorted(figures.model_bar(i).items())) for i in range(32)}
    assert len(styles) == len(bars) == 32
    assert (figures.GOOD_COLOR, figures.BAD_COLOR) == ("#0072B2", "#D55E00")


def test_correct_and_wrong_histograms_are_blue_and_vermillion(setup: dict[str, Any]) -> None:
    figure = figures.uncertainty_histograms(setup["results"]["models"][:1], "test")
    (ax,) = figure.axes
    colors = [to_hex(patch.get_facecolor(), keep_alpha=False) for patch in ax.patches]
    assert colors == [figures.GOOD_COLOR.lower(), figures.BAD_COLOR.lower()]


def test_histograms_of_values_far_from_zero_are_not_drawn_as_a_sliver() -> None:
    """A baseline's 1 - max softmax lies near 0.93 (an untrained or unsure model): the
    x axis cut only above the last occupied bin ran from 0 to 0.95, and the correct and
    wrong pixels sat in a sliver at its right edge (3 % of the width), their difference
    unreadable. The occupied bins fill a good part of the axis."""
    edges = np.linspace(0.0, 1.0, 101)
    correct, wrong = np.zeros(100), np.zeros(100)
    correct[[92, 93]] = [30, 10]  # [0.92, 0.94)
    wrong[[93, 94]] = [5, 40]  # [0.93, 0.95)
    hist = {"edges": edges.tolist(), "correct": correct.tolist(), "wrong": wrong.tolist()}
    model = {
        "name": "baseline",
        "uncertainty_source": "1 - max softmax",
        "splits": {"test": {"uncertainty": {"histograms": hist}}},
        "anomaly": {
            "split": "anomaly",
            "ap": 0.1,
            "auroc": 0.6,
            "histograms": {
                "edges": hist["edges"],
                "normal": hist["correct"],
                "anomaly": hist["wrong"],
            },
        },
    }
    occupied = 0.95 - 0.92
    for figure in (
        figures.uncertainty_histograms([model], "test"),
        figures.anomaly_histograms([model]),
    ):
        (ax,) = figure.axes
        low, high = ax.get_xlim()
        assert low <= 0.92 and high >= 0.95  # every bar shown
        assert occupied / (high - low) >= 0.25, (low, high)


def test_paired_statistics_need_a_teacher() -> None:
    alone = ModelAccumulators(4, 255, anomaly=False, paired=False)
    with pytest.raises(ValueError, match="without a teacher"):
        alone.paired_metrics()
    paired = ModelAccumulators(4, 255, anomaly=False, paired=True)
    assert paired.paired_metrics() == paired.paired.compute()


def test_a_folder_data_set_is_evaluated_with_its_classes(tmp_path: Path, capsys) -> None:
    """root/classes.yaml + root/{split}/images|masks: its mask values, ignore value, class
    names and colours; mIoU against a direct count with the mapping applied by hand."""
    from PIL import Image

    rng = np.random.default_rng(0)
    stored = np.array([10, 20, 30, 0], np.uint8)  # road, car, sky, void
    masks = {}
    for split in ("val", "test"):
        for i in range(2):
            (tmp_path / "data" / split / "images" / "cam1").mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / split / "masks" / "cam1").mkdir(parents=True, exist_ok=True)
            ids = rng.integers(0, 4, (32, 64))
            image = (ids[..., None] * 60 + rng.integers(0, 30, (32, 64, 3))).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / split / "images" / "cam1" / f"{i}.jpg")
            Image.fromarray(stored[ids]).save(
                tmp_path / "data" / split / "masks" / "cam1" / f"{i}.png"
            )
            masks[(split, i)] = np.where(ids == 3, 255, ids)  # the mapping, by hand
    (tmp_path / "data" / "classes.yaml").write_text(
        "classes:\n  - {name: road, color: [1, 2, 3]}\n  - {name: car, color: [4, 5, 6]}\n"
        "  - {name: sky, color: [7, 8, 9]}\nmask_values: {0: 255, 10: 0, 20: 1, 30: 2}\n"
    )
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar", classes=3)
    assert main(["evaluate", str(tmp_path / "net"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--workers", "0"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    (model,) = results["models"]
    assert list(model["splits"]) == ["test"]  # the reference split; no shifted copies
    predictor = load_predictor(tmp_path / "net")
    confusion = np.zeros((3, 3), np.int64)
    for i, sample in enumerate(FolderDataset.split(tmp_path / "data", "test")):
        label = masks[("test", i)]
        pred = predictor.predict(sample["image"][None]).probs[0].argmax(0).numpy()
        valid = label != 255
        np.add.at(confusion, (label[valid], pred[valid]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    miou = np.mean(tp[union > 0] / union[union > 0])
    assert model["splits"]["test"]["segmentation"]["miou"] == pytest.approx(miou, abs=1e-12)
    assert (tmp_path / "out" / "figures" / "net" / "samples_test.png").is_file()


def test_weights_trained_on_other_classes_are_not_scored_silently(tmp_path: Path, capsys) -> None:
    """The weights carry the classes they were trained on (the README: "the weights carry
    the classes"). A data set whose classes.yaml lists other classes in those ids (here
    two of them swapped) gives numbers for classes the network never learnt under those
    ids: evaluate must stop or at least say so, naming the differing classes."""
    root = tmp_path / "data"
    write_mixed_size_data(root, {"test": [(32, 64)]})
    swapped = "".join(f"  - {{name: c{k}, color: [{k}, {k}, {k}]}}\n" for k in (0, 2, 1))
    (root / "classes.yaml").write_text(f"classes:\n{swapped}")
    config = ModelConfig(encoder_options=TINY)
    model = build_segmenter("deeplabv3plus", "resnet18", 3, encoder_options=TINY)
    trained_on = ClassesSpec(("c0", "c1", "c2"), np.zeros((3, 3), np.uint8))
    save_weights(tmp_path / "net" / "checkpoints" / "best.safetensors", model, config, trained_on)
    argv = ["evaluate", str(tmp_path / "net"), "--data", str(root), "--out", str(tmp_path / "o")]
    code = main([*argv, "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 0  # renamed classes are harmless, so a notice, not an error
    assert (
        "in ids 1 (c1 in the weights, c2 in the data), 2 (c2 in the weights, c1 in the data)" in err
    )


def test_a_folder_data_set_without_test_or_val_points_to_splits(tmp_path: Path) -> None:
    """Splits named as the user's own folders (training/validation): the default finds no
    test or val, and the error must say how to choose one (--splits), not only list them."""
    root = tmp_path / "data"
    write_mixed_size_data(root, {"training": [(32, 64)], "validation": [(32, 64)]})
    save_run(tmp_path / "net", None, classes=3)
    with pytest.raises(DataError, match=r"available: training, validation.*--splits"):
        evaluate([tmp_path / "net"], root, progress=False, num_workers=0)


def write_mixed_size_data(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> None:
    """A folder data set of 3 classes: per split, random images and masks of the given
    (H, W), named 0.png, 1.png, ... in order."""
    rng = np.random.default_rng(1)
    for split, shapes in sizes.items():
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i, (height, width) in enumerate(shapes):
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            mask = rng.integers(0, 3, (height, width), dtype=np.uint8)
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    classes = "".join(f"  - {{name: c{k}, color: [{k}, {k}, {k}]}}\n" for k in range(3))
    (root / "classes.yaml").write_text(f"classes:\n{classes}")


def test_images_of_mixed_sizes_are_batched_by_size(tmp_path: Path) -> None:
    """Your own photos come in several sizes: a batch holds images of one size, so any
    batch size works and gives the numbers of one image at a time."""
    from segdistill.evaluate import evaluate, size_batches

    root = tmp_path / "data"
    write_mixed_size_data(root, {"test": [(32, 64), (32, 64), (40, 48), (32, 64), (101, 67)]})
    assert size_batches(FolderDataset.split(root, "test"), 2) == [[0, 1], [2], [3], [4]]
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar", classes=3)
    results = [
        evaluate(
            [tmp_path / "net"],
            root,
            out_dir=tmp_path / f"out{batch}",
            write_homes=False,
            batch_size=batch,
            make_figures=False,
            progress=False,
            num_workers=0,
        )["models"][0]["splits"]["test"]
        for batch in (1, 4)
    ]
    assert results[0]["num_images"] == 5
    segmentation = [r["segmentation"] for r in results]
    assert segmentation[1]["miou"] == pytest.approx(segmentation[0]["miou"], abs=1e-12)
    aurocs = [r["uncertainty"]["misclassification"]["auroc"] for r in results]
    assert aurocs[1] == pytest.approx(aurocs[0], abs=1e-9)


def test_evaluate_scores_what_predict_gives_on_sizes_not_multiples_of_32(tmp_path: Path) -> None:
    """`evaluate` pads a batch as `segdistill predict` pads each image (to a multiple of
    32), so its mIoU is that of predict's class maps. Fed unpadded, the network saw other
    borders and the two disagreed on such sizes."""
    from segdistill.evaluate import evaluate
    from segdistill.predict import predict_arrays
    from segdistill.predictor import input_multiple

    root = tmp_path / "data"
    write_mixed_size_data(root, {"test": [(37, 53), (37, 53), (70, 41)]})
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar", classes=3)
    result = evaluate(
        [tmp_path / "net"],
        root,
        out_dir=tmp_path / "out",
        write_homes=False,
        batch_size=2,
        make_figures=False,
        progress=False,
        num_workers=0,
    )["models"][0]["splits"]["test"]
    predictor = load_predictor(tmp_path / "net")
    multiple = input_multiple(predictor.segmenters())
    confusion = np.zeros((3, 3), np.int64)
    unpadded = np.zeros((3, 3), np.int64)
    uncertainty = []
    for i in range(3):
        image = np.asarray(Image.open(root / "test" / "images" / f"{i}.png").convert("RGB"))
        label = np.asarray(Image.open(root / "test" / "masks" / f"{i}.png")).astype(np.int64)
        (predicted,) = predict_arrays(predictor, [image], multiple)
        np.add.at(confusion, (label.ravel(), predicted.classes.ravel()), 1)
        uncertainty.append(predicted.uncertainty.astype(np.float64).ravel())
        sample = FolderDataset.split(root, "test")[i]
        direct = predictor.predict(sample["image"][None]).probs[0].argmax(0).numpy()
        np.add.at(unpadded, (label.ravel(), direct.ravel()), 1)

    def miou(counts: np.ndarray) -> float:
        tp = np.diag(counts)
        union = counts.sum(0) + counts.sum(1) - tp
        return float(np.mean(tp[union > 0] / union[union > 0]))

    assert result["segmentation"]["miou"] == pytest.approx(miou(confusion), abs=1e-12)
    # The uncertainty too is the images' own part of the padded map (the top left).
    pixel_mean = np.concatenate(uncertainty).mean()
    assert result["uncertainty"]["pixel_mean"] == pytest.approx(pixel_mean, rel=1e-6)
    assert miou(unpadded) != pytest.approx(miou(confusion), abs=1e-6)


def test_sample_figures_of_images_of_mixed_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample figures of a data set of mixed sizes draw each image at its own size:
    the test images (two sizes, in two batches) and the first image of each split."""
    root = tmp_path / "data"
    write_mixed_size_data(root, {"test": [(32, 64), (40, 48), (32, 64)], "val": [(48, 40)]})
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar", classes=3)
    drawn: list[list[tuple[int, ...]]] = []
    original = figures.sample_predictions

    def record(*args: Any, **kwargs: Any) -> Any:
        figure = original(*args, **kwargs)
        *panels, _ = figure.axes  # rows of 5 panels, then the colour bar
        drawn.append([ax.images[0].get_array().shape for ax in panels[::5]])
        return figure

    monkeypatch.setattr(figures, "sample_predictions", record)
    results = evaluate(
        [tmp_path / "net"],
        root,
        ["test", "val"],
        out_dir=tmp_path / "out",
        write_homes=False,
        batch_size=4,
        num_samples=2,
        progress=False,
        device="cpu",
    )
    # Two of the three test images (of two sizes, in two batches), then each split's first.
    assert drawn == [[(32, 64, 3), (40, 48, 3)], [(32, 64, 3), (48, 40, 3)]]
    written = results["models"][0]["figures"]
    assert {"samples_test", "samples_sets"} <= set(written)
    for relative in written.values():
        assert (tmp_path / "out" / relative).stat().st_size > 1000


CITYSCAPES_BASES = {
    "val": ["aachen_000000_000019", "aachen_000001_000019"],
    "test": ["bonn_000000_000019"],
}
FOG_BETAS = (0.005, 0.01, 0.02)


def write_cityscapes(
    root: Path, labelled: tuple[str, ...] = ("val",), weather: bool = True
) -> None:
    """A tiny tree in the official Cityscapes layout, 32x64 images with labelIds masks: val
    (2 images) and test (1); the splits not in `labelled` have masks of void only, as the
    official test split (0 unlabelled, 1 ego vehicle). With `weather`, Foggy Cityscapes of
    both splits at the three betas and Rain Cityscapes of val in two patterns."""
    rng = np.random.default_rng(2)
    classes = rng.choice(np.array([7, 26, 0], np.uint8), (32, 64))  # road, car, void
    void = np.zeros((32, 64), np.uint8)
    void[-4:] = 1
    suffixes = {"leftImg8bit": [""]}
    if weather:
        suffixes["leftImg8bit_foggy"] = [f"_foggy_beta_{beta}" for beta in FOG_BETAS]
    rain = [f"_rain_alpha_0.01_beta_0.005_dropsize_0.01_pattern_{i}" for i in (1, 2)]
    for split, bases in CITYSCAPES_BASES.items():
        for base in bases:
            city = base.split("_")[0]
            folders = (
                {**suffixes, "leftImg8bit_rain": rain} if weather and split == "val" else suffixes
            )
            mask = classes if split in labelled else void
            files = {root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png": mask}
            for folder, ends in folders.items():
                for end in ends:
                    image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
                    files[root / folder / split / city / f"{base}_leftImg8bit{end}.png"] = image
            for path, array in files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


def evaluate_a_tiny_student(
    tmp_path: Path, data: Path, splits: list[str] | None = None
) -> dict[str, Any]:
    """A tiny scalar-head student evaluated on `data` (default splits unless given), with
    no figures and no progress bar."""
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar")
    return evaluate(
        [tmp_path / "net"],
        data,
        splits,
        out_dir=tmp_path / "out",
        write_homes=False,
        num_samples=0,
        make_figures=False,
        progress=False,
        device="cpu",
    )


def test_foggy_and_rain_cityscapes_are_shifted_sets_on_the_labelled_split(tmp_path: Path) -> None:
    """The official leftImg8bit_foggy/ and leftImg8bit_rain/ folders are found, named as
    SynthStreets' copies (heaviest fog last), and read on val: test's masks are void."""
    write_cityscapes(tmp_path)
    found = find_splits(tmp_path)
    shifted = ["fog_0.005", "fog_0.01", "fog_0.02", "rain"]
    assert list(found) == ["test", "val", *shifted]
    # By default val, the clean images of the weather sets' scenes (their OOD reference),
    # not test: its masks are void and no set is scored against it.
    assert [s.name for s in select_splits(found, None)] == ["val", *shifted]
    val = CityscapesDataset(tmp_path, "val")
    for name, beta in zip(shifted, FOG_BETAS):
        spec = found[name]
        assert (spec.shifted, spec.folder, spec.variant, spec.beta) == (True, "val", "foggy", beta)
        dataset = spec.dataset()
        assert dataset.names == [f"{b}_foggy_beta_{beta}" for b in CITYSCAPES_BASES["val"]]
        assert np.array_equal(dataset.load(1)["label"], val.load(1)["label"])
    assert (found["rain"].folder, found["rain"].variant) == ("val", "rain")
    assert len(found["rain"].dataset()) == 4  # every rain pattern
    assert found["rain"].images == tmp_path / "leftImg8bit_rain" / "val"


def test_foggy_and_rain_cityscapes_read_a_labelled_test_split(tmp_path: Path) -> None:
    write_cityscapes(tmp_path, labelled=("val", "test"))
    assert {s.folder for s in find_splits(tmp_path).values() if s.shifted} == {"test", "val"}
    assert find_splits(tmp_path)["fog_0.02"].folder == "test"
    assert find_splits(tmp_path)["rain"].folder == "val"  # Rain Cityscapes has no test


def test_weather_sets_that_cannot_be_named(tmp_path: Path) -> None:
    write_cityscapes(tmp_path)
    city = tmp_path / "leftImg8bit_foggy" / "val" / "aachen"
    odd = city / "aachen_000000_000019_leftImg8bit_foggy_beta_0.020.png"
    shutil.copy(city / "aachen_000000_000019_leftImg8bit_foggy_beta_0.02.png", odd)
    with pytest.raises(DataError, match=r"/aachen/\S+_beta_0\.020\.png: cannot read its fog beta"):
        find_splits(tmp_path)
    odd.unlink()
    write_cityscapes(tmp_path / "shifts" / "rain", weather=False)
    both = r"'rain': .*shifts/rain/leftImg8bit/val and .*/leftImg8bit_rain/val; keep one"
    with pytest.raises(DataError, match=rf"two shifted sets are named {both}"):
        find_splits(tmp_path)


def test_a_shifted_copy_is_read_on_a_labelled_split(tmp_path: Path) -> None:
    """A copy under shifts/ with Cityscapes' void test masks is read on its val; with test
    labelled, on test (the reference); with nothing labelled, on test (OOD needs no labels)."""
    for labelled, folder in ((("val",), "val"), (("val", "test"), "test"), ((), "test")):
        root = tmp_path / "-".join(labelled)
        write_cityscapes(root / "shifts" / "night", labelled, weather=False)
        assert find_splits(root)["night"].folder == folder


def test_an_unlabelled_split_gets_a_notice_and_the_summary_a_labelled_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cityscapes' test split (void masks) has undefined pixel metrics, a notice says so,
    and the summary shows val; Foggy / Rain Cityscapes, read on val, are scored as OOD
    against the clean val images of the same scenes, not test's other cities."""
    data = tmp_path / "data"
    write_cityscapes(data)
    results = evaluate_a_tiny_student(tmp_path, data, ["test", "val", "fog_0.02", "rain"])
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1
    assert notices[0].startswith(
        f"notice: no labelled pixels in split 'test' (masks in {data / 'gtFine' / 'test'}, "
        "images evaluated: 1): its pixel metrics are undefined"
    )
    (model,) = results["models"]
    splits = model["splits"]
    assert splits["test"]["num_pixels"] == 0 and splits["test"]["segmentation"]["miou"] is None
    assert splits["val"]["num_pixels"] == splits["fog_0.02"]["num_pixels"] > 0
    assert splits["rain"]["num_images"] == 4
    # Clean test and val are no OOD sets; the weather sets are scored against val's images.
    ood = model["ood"]
    assert set(ood["sets"]) == {"fog_0.02", "rain"}
    assert ood["reference"] == results["data"]["reference"] == "val"
    assert {name: s["reference"] for name, s in ood["sets"].items()} == {
        "fog_0.02": "val",
        "rain": "val",
    }
    scores = ood["image_scores"]
    assert len(scores["val"]["mean"]) == 2 and len(scores["test"]["mean"]) == 1
    for name in ("fog_0.02", "rain"):
        inliers, outliers = scores["val"]["mean"], scores[name]["mean"]
        expected = roc_auc_score([0] * len(inliers) + [1] * len(outliers), [*inliers, *outliers])
        assert ood["sets"][name]["by_aggregator"]["mean"]["auroc"] == pytest.approx(expected)
    lines = format_summary(results["models"]).splitlines()
    assert lines[0] == "metrics on 'val':"
    assert "image-level OOD AUROC vs 'val' (best aggregator):" in lines
    miou = splits["val"]["segmentation"]["miou"]
    assert f"{miou:.4f}" in next(line for line in lines if line.startswith("net"))


def test_the_default_splits_are_the_shifted_sets_and_their_clean_splits(tmp_path: Path) -> None:
    """By default, the clean splits the shifted sets are scored against, then the sets:
    Cityscapes' void test is left out (and may be missing), a labelled test that Foggy
    Cityscapes is read on is in; without shifted sets, test when labelled, else val (plain
    Cityscapes evaluated its void test, a table of '-'), test when neither is."""
    shifted = ["fog_0.005", "fog_0.01", "fog_0.02", "rain"]
    cases = {
        "void_test": ((("val",), True), ["val", *shifted]),
        "labelled_test": ((("val", "test"), True), ["test", "val", *shifted]),
        "no_weather": ((("val",), False), ["val"]),
        "labelled_no_weather": ((("val", "test"), False), ["test"]),
        "all_void": (((), False), ["test"]),
    }
    for name, ((labelled, weather), expected) in cases.items():
        write_cityscapes(tmp_path / name, labelled, weather)
        assert [s.name for s in select_splits(find_splits(tmp_path / name), None)] == expected
    # A tree without a test split: the weather sets on val, as before.
    for folder in ("leftImg8bit", "gtFine", "leftImg8bit_foggy"):
        shutil.rmtree(tmp_path / "void_test" / folder / "test")
    found = find_splits(tmp_path / "void_test")
    assert "test" not in found
    assert [s.name for s in select_splits(found, None)] == ["val", *shifted]
    # Train and val only (no shifted set): val, where a missing test was an error.
    shutil.rmtree(tmp_path / "no_weather" / "leftImg8bit" / "test")
    assert [s.name for s in select_splits(find_splits(tmp_path / "no_weather"), None)] == ["val"]
    with pytest.raises(DataError, match=r"split 'test' not found .* available: val"):
        select_splits(find_splits(tmp_path / "no_weather"), ["test"])
    with pytest.raises(DataError, match=r"no split asked for; available: val"):
        select_splits(find_splits(tmp_path / "no_weather"), [])  # a StopIteration traceback


def test_each_weather_set_is_scored_against_its_own_clean_split(tmp_path: Path) -> None:
    """With a labelled test, Foggy Cityscapes is read on test and Rain Cityscapes (no test
    folder) on val: fog is scored against clean test, rain against clean val (the same
    scenes), not against test's other cities; the summary and figures name both."""
    data = tmp_path / "data"
    write_cityscapes(data, labelled=("val", "test"))
    results = evaluate_a_tiny_student(tmp_path, data)
    fogs = ["fog_0.005", "fog_0.01", "fog_0.02"]
    assert results["data"]["splits"] == ["test", "val", *fogs, "rain"]
    references = {**dict.fromkeys(fogs, "test"), "rain": "val"}
    assert results["data"]["references"] == references
    (model,) = results["models"]
    ood = model["ood"]
    assert {name: s["reference"] for name, s in ood["sets"].items()} == references
    # The split most sets are scored against, for captions that name one.
    assert ood["reference"] == results["data"]["reference"] == "test"
    scores = ood["image_scores"]
    for name, reference in references.items():
        inliers, outliers = scores[reference]["mean"], scores[name]["mean"]
        expected = roc_auc_score([0] * len(inliers) + [1] * len(outliers), [*inliers, *outliers])
        assert ood["sets"][name]["by_aggregator"]["mean"]["auroc"] == pytest.approx(expected)
    lines = format_summary(results["models"]).splitlines()
    assert (
        "image-level OOD AUROC vs 'test' (fog_0.005, fog_0.01, fog_0.02) and 'val' (rain) "
        "(best aggregator):"
    ) in lines
    roc = figures.ood_roc_curves(model)
    assert roc is not None
    titles = [ax.get_title() for ax in roc.axes if ax.get_title()]
    assert titles == [f"{references[n]} vs {n}" for n in ood["sets"]]
    bars = figures.ood_auroc_bars([model])
    assert bars is not None
    ticks = [t.get_text() for t in bars.axes[0].get_xticklabels()]
    assert ticks == [f"{n} vs {references[n]}" for n in ood["sets"]]
    assert bars.axes[0].get_title() == "Image-level OOD detection vs each set's clean split"


def test_the_ood_references_of_the_splits_asked_for(tmp_path: Path) -> None:
    """Foggy / Rain Cityscapes are read on val: scored against val when it is evaluated,
    else against test (docs/evaluation.md), and not at all without an evaluated clean
    split; a split asked for twice is evaluated once; a tie of references names the
    first one."""
    write_cityscapes(tmp_path)
    found = find_splits(tmp_path)

    def references(splits: list[str]) -> dict[str, str]:
        return ood_references(select_splits(found, splits))

    assert references(["val", "fog_0.02", "rain"]) == {"fog_0.02": "val", "rain": "val"}
    assert references(["test", "fog_0.02"]) == {"fog_0.02": "test"}
    assert references(["fog_0.02", "rain"]) == {}  # no clean split: no OOD scores
    assert main_reference({}) is None
    asked = ["fog_0.02", "val", "fog_0.02", "val"]
    assert [s.name for s in select_splits(found, asked)] == ["fog_0.02", "val"]
    assert main_reference({"fog_0.02": "test", "rain": "val"}) == "test"
    assert main_reference({"rain": "val", "fog_0.02": "test"}) == "val"
    assert main_reference({"a": "val", "b": "test", "c": "test"}) == "test"


def test_every_split_without_labelled_pixels_gets_its_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The void split need not come first: each one is named."""
    data = tmp_path / "data"
    write_cityscapes(data, weather=False)
    results = evaluate_a_tiny_student(tmp_path, data, ["val", "test"])
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == 1 and "no labelled pixels in split 'test'" in notices[0]
    assert results["models"][0]["splits"]["test"]["num_pixels"] == 0


def test_the_sample_figure_shows_a_labelled_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cityscapes' test masks are void: the sample figure is drawn from val, the split the
    summary shows, not from test, whose ground-truth column would be empty."""
    drawn: list[str] = []
    monkeypatch.setattr(figures, "model_figures", lambda models, slots: iter(()))
    monkeypatch.setattr(
        figures, "sample_predictions", lambda **kwargs: drawn.append(kwargs["title"])
    )
    monkeypatch.setattr("segdistill.evaluate._save", lambda figure, path: path)
    sets = []
    for split in ("test", "val"):
        samples = SampleSet(split, TRAIN_ID_COLORS, 255, names=[f"{split}_0"])
        samples.images = [np.zeros((8, 16, 3), np.uint8)]
        samples.labels = [np.full((8, 16), 255 if split == "test" else 0, np.int64)]
        samples.predictions["net"] = [np.zeros((8, 16), np.uint8)]
        samples.uncertainty["net"] = [np.zeros((8, 16), np.float32)]
        sets.append(samples)
    model = {
        "name": "net",
        "uncertainty_source": "student head (scalar)",
        "class_names": ["road"],
        "splits": {"test": {"num_pixels": 0}, "val": {"num_pixels": 128}},
    }
    written = _model_figures([model], [0], sets, tmp_path)
    assert set(written) == {"samples_val", "samples_sets"}
    assert written["samples_val"] == tmp_path / "samples_val.png"
    assert drawn[0] == "net: val images"
    # With test labelled (SynthStreets), test as before.
    model["splits"]["test"]["num_pixels"] = 128
    assert set(_model_figures([model], [0], sets, tmp_path)) == {"samples_test", "samples_sets"}


def test_the_per_model_figures_show_a_split_with_labelled_pixels() -> None:
    """The reliability, removal and histogram figures (`figures.pick_split`) show the
    summary's split: not Cityscapes' all-void test beside val, test where it is labelled,
    and only a split every model has."""
    void_test = {
        "test": {"num_pixels": 0},
        "val": {"num_pixels": 128},
        "fog_0.02": {"num_pixels": 64},
    }
    models = [{"splits": void_test}, {"splits": dict(void_test)}]
    assert figures.pick_split(models) == "val"
    assert summary_split(void_test) == "val"
    labelled = {**void_test, "test": {"num_pixels": 128}}
    assert figures.pick_split([{"splits": labelled}]) == summary_split(labelled) == "test"
    only_one_has_val = [
        {"splits": void_test},
        {"splits": {"test": {}, "fog_0.02": {"num_pixels": 1}}},
    ]
    assert figures.pick_split(only_one_has_val) == "fog_0.02"
    unlabelled = {"val": {"num_pixels": 0}, "test": {"num_pixels": 0}}
    assert figures.pick_split([{"splits": unlabelled}]) == "test"
    assert figures.pick_split(models, "fog_0.02") == "fog_0.02"


def _batched_maps(predictor: Any, tree: Path, anomaly: bool = False) -> dict[str, np.ndarray]:
    """A predictor run over `tree`'s test images in evaluate's batches of 2 (padded as
    evaluate pads them): every pixel's uncertainty, OOD map, predicted class and label,
    flattened, and the anomaly mask read from its PNG files."""
    dataset = CityscapesDataset(tree, "test")
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("unc", "ood", "pred", "label", "mask")}
    for start in range(0, len(dataset), 2):
        samples = [dataset[i] for i in range(start, min(start + 2, len(dataset)))]
        prediction = predictor.predict_padded(torch.stack([s["image"] for s in samples]))
        out["unc"].append(prediction.uncertainty[:, 0].numpy().ravel())
        out["ood"].append(prediction.ood_map[:, 0].numpy().ravel())
        out["pred"].append(prediction.probs.argmax(1).numpy().ravel())
        out["label"].append(torch.stack([s["label"] for s in samples]).numpy().ravel())
    if anomaly:
        for name in dataset.names:
            city = name.split("_")[0]
            path = tree / "gtFine" / "test" / city / f"{name}_gtFine_anomaly.png"
            out["mask"].append(np.asarray(Image.open(path)).ravel())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def test_each_models_uncertainty_metrics_are_of_its_own_map(setup: dict[str, Any]) -> None:
    """The uncertainty section of every model is of its own map (the ensemble's pred_std,
    the student's head), not 1 - max softmax, over the labelled pixels: the extremes, the
    means by predicted class and the misclassification AUROC of the metrics' 1000 bins,
    recomputed here with numpy and scikit-learn."""
    compared = 0
    for model in setup["results"]["models"]:
        maps = _batched_maps(load_predictor(setup["root"] / model["name"]), setup["data"])
        valid = maps["label"] != 255
        unc = maps["unc"][valid].astype(np.float64)
        pred, label = maps["pred"][valid], maps["label"][valid]
        result = model["splits"]["test"]["uncertainty"]
        assert result["source"] == "given"
        assert (result["min"], result["max"]) == pytest.approx((unc.min(), unc.max()), rel=1e-6)
        assert result["pixel_mean"] == pytest.approx(unc.mean(), rel=1e-9)
        for c, got in enumerate(result["per_class_mean"]):
            assert got == (pytest.approx(unc[pred == c].mean()) if (pred == c).any() else None)
        wrong = pred != label
        if wrong.all():  # an untrained network may get no pixel right: no AUROC
            assert result["misclassification"]["auroc"] is None
            continue
        binned = np.clip(np.floor(unc * 1000), 0, 999)  # the metrics' bins over [0, 1]
        auroc = roc_auc_score(wrong, binned)
        assert result["misclassification"]["auroc"] == pytest.approx(auroc, abs=1e-9)
        compared += 1
    assert compared  # one model at least was told apart from the other measures


def test_the_student_is_paired_with_the_teachers_map_of_the_same_pixels(
    setup: dict[str, Any],
) -> None:
    """vs_teacher's 2D histograms count [teacher bin][student bin] of the labelled pixels,
    split by whether the student's class is right, as a direct count over 50 bins."""
    root, data = setup["root"], setup["data"]
    (model,) = [m for m in setup["results"]["models"] if m["name"] == "dudes"]
    for split, tree in (("test", data), ("night", data / "shifts" / "night")):
        student = _batched_maps(load_predictor(root / "dudes"), tree)
        teacher = _batched_maps(load_predictor(root / "ens"), tree)
        valid = student["label"] != 255
        bins = [
            np.clip(np.floor(m["unc"][valid] * 50), 0, 49).astype(int) for m in (teacher, student)
        ]
        wrong = (student["pred"] != student["label"])[valid]
        expected = np.zeros((2, 50, 50), np.int64)
        np.add.at(expected, (wrong.astype(int), *bins), 1)
        hist = model["vs_teacher"]["splits"][split]["paired"]["hist2d"]
        np.testing.assert_array_equal(hist["correct"], expected[0])
        np.testing.assert_array_equal(hist["wrong"], expected[1])


def test_pixel_anomaly_scores_are_the_uncertainty_inside_the_masks_region(
    setup: dict[str, Any],
) -> None:
    """The anomaly section pools the uncertainty of the anomaly set's pixels whose mask is
    0 (normal) or 1 (anomaly), not its void (255); AUROC over the evaluator's 10000 bins by
    scikit-learn."""
    for model in setup["results"]["models"]:
        predictor = load_predictor(setup["root"] / model["name"])
        maps = _batched_maps(predictor, setup["data"] / "shifts" / "anomaly", anomaly=True)
        inside = maps["mask"] != 255
        assert not inside.all()  # the test is blind to the region of interest without void
        is_anomaly = maps["mask"][inside] == 1
        scores = np.clip(np.floor(maps["unc"][inside].astype(np.float64) * 10000), 0, 9999)
        anomaly = model["anomaly"]
        assert anomaly["split"] == "anomaly"
        assert anomaly["num_anomaly_pixels"] == is_anomaly.sum()
        assert anomaly["num_normal_pixels"] == (~is_anomaly).sum()
        assert anomaly["auroc"] == pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-9)


def test_pixel_anomaly_scores_of_a_per_class_student_are_its_predicted_classs_std(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """A Holder student's pixel anomaly score is its uncertainty (the std of the
    predicted class), not eq. 8's mean over the classes that image-level OOD uses."""
    torch.manual_seed(0)
    save_run(tmp_path / "holder", "per_class")
    results = evaluate(
        [tmp_path / "holder"],
        setup["data"],
        ["test", "anomaly"],
        batch_size=2,
        out_dir=tmp_path / "out",
        write_homes=False,
        make_figures=False,
        progress=False,
        device="cpu",
    )
    maps = _batched_maps(
        load_predictor(tmp_path / "holder"), setup["data"] / "shifts" / "anomaly", anomaly=True
    )
    inside = maps["mask"] != 255
    is_anomaly = maps["mask"][inside] == 1

    def auroc(values: np.ndarray) -> float:
        binned = np.clip(np.floor(values[inside].astype(np.float64) * 10000), 0, 9999)
        return float(roc_auc_score(is_anomaly, binned))

    assert auroc(maps["unc"]) != pytest.approx(auroc(maps["ood"]), abs=1e-6)  # told apart
    assert results["models"][0]["anomaly"]["auroc"] == pytest.approx(auroc(maps["unc"]), abs=1e-9)


def test_the_summary_rows_are_the_models_numbers(setup: dict[str, Any]) -> None:
    """Every column of the printed summary and each set's OOD cell (the AUROC of the
    aggregator with the highest one, and its name) are the model's numbers."""
    models = setup["results"]["models"]
    lines = format_summary(models).splitlines()
    # Each header over its own column, in the order of the values below.
    headers = ["model", "kind", "mIoU", "pixel acc", "ECE", "misc. AUROC", "AURC"]
    assert re.split(r"\s{2,}", lines[1].strip()) == [*headers, "pAvPU max", "anomaly AP"]
    for model in models:
        test = model["splits"]["test"]
        unc = test["uncertainty"]
        expected = [
            test["segmentation"]["miou"],
            test["segmentation"]["pixel_accuracy"],
            test["calibration"]["ece"],
            unc["misclassification"]["auroc"],
            unc["aurc"],
            unc["pavpu"]["max"],
            model["anomaly"]["ap"],
        ]
        rows = [line.split() for line in lines if line.startswith(model["name"] + " ")]
        assert rows[0][2:] == ["-" if v is None else f"{v:.4f}" for v in expected]
        night = model["ood"]["sets"]["night"]["by_aggregator"]
        best = max(AGGREGATORS, key=lambda agg: night[agg]["auroc"])
        assert model["ood"]["sets"]["night"]["best_aggregator"] == best
        cell = f"{night[best]['auroc']:.3f} {figures.AGGREGATOR_LABELS[best]}"
        assert " ".join(rows[1][1:]) == cell


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def test_the_curve_figures_plot_each_models_numbers(setup: dict[str, Any]) -> None:
    """Reliability (x confidence, y accuracy), misclassification ROC (wrong = positive,
    from the stored histograms), mIoU vs removed and the correct / wrong histograms (each
    a share of its own pixels) draw each model's own numbers, read back from the axes."""
    models = setup["results"]["models"]
    results = [m["splits"]["test"] for m in models]
    (ax,) = figures.reliability_diagram(models, "test").axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("confidence (max probability)", "accuracy")
    for line, result in zip(ax.get_lines()[1:], results, strict=True):
        conf, acc = (
            _nan(result["calibration"]["confidence"]),
            _nan(result["calibration"]["accuracy"]),
        )
        np.testing.assert_array_equal(line.get_xdata(), conf[~np.isnan(conf)])
        np.testing.assert_array_equal(line.get_ydata(), acc[~np.isnan(conf)])
    (ax,) = figures.misclassification_roc(models, "test").axes
    for line, result in zip(ax.get_lines()[1:], results, strict=True):
        hist = result["uncertainty"]["histograms"]
        # Thresholds from the highest bin down: the wrong pixels flagged / all wrong ones.
        flagged_wrong = np.cumsum([0, *hist["wrong"][::-1]])
        flagged_correct = np.cumsum([0, *hist["correct"][::-1]])
        with np.errstate(invalid="ignore"):  # no correct pixel: an undefined FPR
            np.testing.assert_allclose(line.get_xdata(), flagged_correct / flagged_correct[-1])
            np.testing.assert_allclose(line.get_ydata(), flagged_wrong / flagged_wrong[-1])
    (ax,) = figures.miou_vs_removed(models, "test").axes
    for line, result in zip(ax.get_lines(), results, strict=True):
        curve = result["uncertainty"]["miou_vs_removed"]
        np.testing.assert_allclose(line.get_xdata(), 100 * np.array(curve["removed_fraction"]))
        np.testing.assert_array_equal(line.get_ydata(), _nan(curve["miou"]))
    axes = figures.uncertainty_histograms(models, "test").axes
    for ax, result in zip(axes, results, strict=True):
        hist = result["uncertainty"]["histograms"]
        for patch, key in zip(ax.patches, ("correct", "wrong"), strict=True):
            counts = np.array(hist[key], dtype=np.float64)
            share = counts / counts.sum() if counts.sum() else counts  # no pixel: no bar
            np.testing.assert_allclose(patch.get_data().values, share)
    axes = figures.anomaly_histograms(models).axes
    colours = (figures.GOOD_COLOR.lower(), figures.BAD_COLOR.lower())
    for ax, model in zip(axes, models, strict=True):
        hist = model["anomaly"]["histograms"]
        for patch, key, colour in zip(ax.patches, ("normal", "anomaly"), colours, strict=True):
            counts = np.array(hist[key], dtype=np.float64)
            np.testing.assert_allclose(patch.get_data().values, counts / counts.sum())
            assert to_hex(patch.get_facecolor(), keep_alpha=False) == colour
            np.testing.assert_allclose(patch.get_data().edges, hist["edges"])


def test_the_bar_figures_plot_each_models_numbers(setup: dict[str, Any]) -> None:
    """mIoU per set, mean uncertainty per predicted class and the best aggregator's OOD
    AUROC: one bar per model and group, in the model's order, at the model's value."""
    models = setup["results"]["models"]

    def heights(figure: Any) -> np.ndarray:
        (ax,) = figure.axes
        return np.array([bar.get_height() for bar in ax.patches]).reshape(len(models), -1)

    per_split = [[m["splits"][s]["segmentation"]["miou"] for s in SPLITS] for m in models]
    np.testing.assert_array_equal(heights(figures.miou_per_split(models)), per_split)
    per_class = [_nan(m["splits"]["test"]["uncertainty"]["per_class_mean"]) for m in models]
    np.testing.assert_array_equal(heights(figures.per_class_uncertainty(models, "test")), per_class)
    aurocs = [
        [max(a["auroc"] for a in m["ood"]["sets"]["night"]["by_aggregator"].values())]
        for m in models
    ]
    np.testing.assert_array_equal(heights(figures.ood_auroc_bars(models)), aurocs)


def test_the_teacher_student_histograms_draw_teacher_across_and_student_up(
    setup: dict[str, Any],
) -> None:
    student = next(m for m in setup["results"]["models"] if m.get("vs_teacher"))
    hist = student["vs_teacher"]["splits"]["test"]["paired"]["hist2d"]
    panels = [ax for ax in figures.teacher_student_hist2d([student], "test").axes if ax.get_title()]
    for ax, key in zip(panels, ("correct", "wrong"), strict=True):
        (mesh,) = ax.collections
        counts = np.array(hist[key])  # [teacher bin][student bin]
        # pcolormesh's rows are y (student) and its columns x (teacher).
        np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(50, 50), counts.T)
        assert ax.get_xlabel() == "teacher (ens)" and ax.get_ylabel() == "dudes (student)"


def test_the_ood_figures_plot_the_models_scores(setup: dict[str, Any]) -> None:
    """OOD ROC: each aggregator's stored curve (x FPR, y TPR), the best one thick; image
    scores: every set's scores of the aggregator best on most sets, clean sets blue."""
    for model in setup["results"]["models"]:
        ood = model["ood"]
        night = ood["sets"]["night"]
        roc = figures.ood_roc_curves(model)
        assert roc is not None and model["name"] in roc.get_suptitle()
        (ax,) = [a for a in roc.axes if a.get_title()]
        for line, agg in zip(ax.get_lines()[1:], AGGREGATORS, strict=True):
            curve = night["by_aggregator"][agg]["roc"]
            np.testing.assert_array_equal(line.get_xdata(), curve["fpr"])
            np.testing.assert_array_equal(line.get_ydata(), curve["tpr"])
            assert line.get_linewidth() == (2.2 if agg == night["best_aggregator"] else 1.1)
        scores = figures.ood_score_distributions(model)
        assert scores is not None
        (ax,) = scores.axes
        best = night["best_aggregator"]  # the only set: best on most sets
        assert ax.get_ylabel() == f"image score: {figures.AGGREGATOR_LABELS[best]}"
        dots = ax.collections
        assert len(dots) == len(SPLITS)
        for dots_of_set, split in zip(dots, SPLITS):
            offsets = np.asarray(dots_of_set.get_offsets())
            np.testing.assert_array_equal(offsets[:, 1], ood["image_scores"][split][best])
            colour = to_hex(dots_of_set.get_facecolor()[0], keep_alpha=False)
            clean = figures.GOOD_COLOR if split == "test" else figures.BAD_COLOR
            assert colour == clean.lower()


def test_a_students_own_figures_are_of_the_student(setup: dict[str, Any]) -> None:
    """A student's figures show the teacher's curves beside its own, but its OOD and
    pairing figures are its own, not the teacher's."""
    teacher, student = setup["results"]["models"]
    drawn = dict(figures.model_figures([teacher, student]))
    assert drawn["ood_roc"].get_suptitle().startswith("dudes:")
    assert drawn["ood_scores"].axes[0].get_title().startswith("dudes:")
    ax = drawn["reliability"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][1:] == [
        f"ens (ensemble)  ECE {teacher['splits']['test']['calibration']['ece']:.4f}",
        f"dudes (student)  ECE {student['splits']['test']['calibration']['ece']:.4f}",
    ]


def test_sample_maps_are_the_first_images_subsampled_as_the_photographs() -> None:
    """SampleSet keeps the first `count` images of a batch and every map at the step the
    photograph is subsampled with (a width over SAMPLE_MAX_WIDTH), the class of the highest
    probability and the model's `uncertainty` (a per-class head's predicted-class std, the
    measure the colour bar names), not its OOD map."""
    generator = torch.Generator().manual_seed(0)
    width = 2 * SAMPLE_MAX_WIDTH + 3  # subsampled by 3
    images = torch.randn(3, 3, 7, width, generator=generator)
    labels = torch.randint(0, 4, (3, 7, width), generator=generator)
    probs = torch.rand(3, 4, 7, width, generator=generator).softmax(1)
    uncertainty = torch.rand(3, 1, 7, width, generator=generator)
    per_class_mean = torch.rand(3, 1, 7, width, generator=generator)
    prediction = Prediction(probs, uncertainty, {PER_CLASS_MEAN: per_class_mean})
    samples = SampleSet("test", TRAIN_ID_COLORS, 255)
    samples.add({"image": images, "label": labels, "name": ["a", "b", "c"]}, 2)
    samples.add_model("net", prediction, 2, width)
    assert samples.names == ["a", "b"]
    for k in range(2):
        assert samples.images[k].shape == (3, 343, 3)
        np.testing.assert_array_equal(samples.labels[k], labels[k, ::3, ::3].numpy())
        classes = probs[k, :, ::3, ::3].numpy().argmax(0)
        np.testing.assert_array_equal(samples.predictions["net"][k], classes)
        np.testing.assert_array_equal(
            samples.uncertainty["net"][k], uncertainty[k, 0, ::3, ::3].numpy()
        )
    expected = unnormalize(images[:2, :, ::3, ::3])
    np.testing.assert_array_equal(np.stack(samples.images), expected)


def test_a_folder_data_sets_own_ignore_index_leaves_its_void_pixels_out(tmp_path: Path) -> None:
    """A classes file's ignore_index other than 255 (3, the first id past 3 classes) is
    the void of every metric: the pixel counts, the student-teacher pairing and the
    results' data section."""
    root = tmp_path / "data"
    write_mixed_size_data(root, {"test": [(32, 64), (32, 64)]})
    masks = root / "test" / "masks"
    void = 0
    for i in range(2):
        mask = np.asarray(Image.open(masks / f"{i}.png")).copy()
        mask[: 4 + 3 * i] = 3
        void += int((mask == 3).sum())
        Image.fromarray(mask).save(masks / f"{i}.png")
    classes = (root / "classes.yaml").read_text()
    (root / "classes.yaml").write_text(classes + "ignore_index: 3\n")
    torch.manual_seed(0)
    for i in range(2):
        save_run(tmp_path / "ens" / f"member_{i}", None, classes=3)
    manifest = {"members": [{"checkpoint": f"member_{i}"} for i in range(2)]}
    (tmp_path / "ens" / "manifest.json").write_text(json.dumps(manifest))
    save_run(tmp_path / "net", "scalar", classes=3)
    results = evaluate(
        [tmp_path / "ens", tmp_path / "net"],
        root,
        out_dir=tmp_path / "out",
        write_homes=False,
        make_figures=False,
        progress=False,
        device="cpu",
    )
    assert results["data"]["ignore_index"] == 3
    labelled = 2 * 32 * 64 - void
    for model in results["models"]:
        assert model["splits"]["test"]["num_pixels"] == labelled
    student = results["models"][1]
    assert student["vs_teacher"]["splits"]["test"]["paired"]["num_pixels"] == labelled


def test_the_samples_of_a_wide_image_are_subsampled_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image wider than SAMPLE_MAX_WIDTH is drawn subsampled by the step its width
    asks (here 3), and so are its labels and the model's class and uncertainty maps."""
    root = tmp_path / "data"
    width = 2 * SAMPLE_MAX_WIDTH + 6
    write_mixed_size_data(root, {"test": [(32, width)]})
    torch.manual_seed(0)
    save_run(tmp_path / "net", "scalar", classes=3)
    drawn: list[dict[str, Any]] = []
    monkeypatch.setattr(figures, "sample_predictions", lambda **kwargs: drawn.append(kwargs))
    monkeypatch.setattr(figures, "model_figures", lambda models, slots: iter(()))
    monkeypatch.setattr("segdistill.evaluate._save", lambda figure, path: path)
    evaluate(
        [tmp_path / "net"],
        root,
        out_dir=tmp_path / "out",
        write_homes=False,
        num_samples=1,
        progress=False,
        device="cpu",
    )
    (kwargs,) = drawn
    shape = (-(-32 // 3), -(-width // 3))
    assert kwargs["images"][0].shape == (*shape, 3)
    for key in ("labels", "predictions", "uncertainty"):
        assert kwargs[key][0].shape == shape, key
    label = np.asarray(Image.open(root / "test" / "masks" / "0.png"))
    np.testing.assert_array_equal(kwargs["labels"][0], label[::3, ::3])


# Okabe & Ito's first three colours, written out apart from figures._COLORS.
FIRST_COLOURS = ["#0072b2", "#e69f00", "#009e73"]


def curve_model(name: str, ece: float, auroc: float, aupr: float, ood: bool) -> dict[str, Any]:
    """The least of a results.json model the comparison figures read."""
    result = {"auroc": 0.8, "aupr": 0.3, "fpr95": 0.5, "roc": {"fpr": [0, 1], "tpr": [0, 1]}}
    return {
        "name": name,
        "kind": "student",
        "uncertainty_source": "1 - max softmax",
        "class_names": ["road", "car"],
        "splits": {
            "test": {
                "num_pixels": 8,
                "segmentation": {"miou": 0.5},
                "calibration": {"ece": ece, "confidence": [0.6, 0.9], "accuracy": [0.5, 0.8]},
                "uncertainty": {
                    "misclassification": {"auroc": auroc, "aupr": aupr, "fpr95": 0.5},
                    "histograms": {"edges": [0.0, 0.5, 1.0], "correct": [3, 1], "wrong": [1, 3]},
                },
            }
        },
        "ood": {
            "reference": "test",
            "aggregators": ["mean"],
            "sets": {"night": {"best_aggregator": "mean", "by_aggregator": {"mean": result}}},
        }
        if ood
        else None,
    }


def test_a_model_keeps_its_colour_in_every_comparison_figure() -> None:
    """Model k is drawn in the k-th colour in every figure, also where an earlier model has
    no bar (no OOD results); legends give each model's own AUROC and ECE; the ROC plots
    the false positive rate across."""
    models = [
        curve_model("a", 0.05, 0.7, 0.2, ood=False),
        curve_model("b", 0.15, 0.6, 0.4, ood=True),
        curve_model("c", 0.25, 0.9, 0.1, ood=True),
    ]
    (ax,) = figures.reliability_diagram(models, "test").axes
    assert [to_hex(line.get_color()) for line in ax.get_lines()[1:]] == FIRST_COLOURS
    legend = [t.get_text() for t in ax.get_legend().get_texts()][1:]
    assert legend == [
        f"{m} (student)  ECE {e}" for m, e in zip("abc", ("0.0500", "0.1500", "0.2500"))
    ]
    (ax,) = figures.misclassification_roc(models, "test").axes
    assert [to_hex(line.get_color()) for line in ax.get_lines()[1:]] == FIRST_COLOURS
    legend = [t.get_text() for t in ax.get_legend().get_texts()][1:]
    assert legend == [
        f"{m} (student)  AUROC {a}" for m, a in zip("abc", ("0.700", "0.600", "0.900"))
    ]
    assert ax.get_xlabel().startswith("false positive rate")
    assert ax.get_ylabel().startswith("true positive rate")
    (ax,) = figures.miou_per_split(models).axes
    assert [to_hex(bar.get_facecolor(), keep_alpha=False) for bar in ax.patches] == FIRST_COLOURS
    bars = figures.ood_auroc_bars(models)
    assert bars is not None
    (ax,) = bars.axes
    colours = [to_hex(bar.get_facecolor(), keep_alpha=False) for bar in ax.patches]
    assert colours == FIRST_COLOURS[1:]  # b and c: their colours, not a's and b's


def test_the_anomaly_and_ood_roc_figures_name_each_metric_with_its_own_value() -> None:
    model = curve_model("a", 0.05, 0.7, 0.2, ood=True)
    night = model["ood"]["sets"]["night"]
    night["by_aggregator"]["max"] = {
        "auroc": 0.6,
        "aupr": 0.9,
        "fpr95": 0.4,
        "roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.7, 1]},
    }
    roc = figures.ood_roc_curves(model)
    assert roc is not None
    (ax,) = [a for a in roc.axes if a.get_title()]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean 0.800", "max 0.600"]
    assert ax.get_legend().get_title().get_text() == "AUROC"
    # The legend lies under the panel, on no curve (AUROC-1 curves fill the corners).
    figures.png_bytes(roc)
    assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0
    # One model's aggregators, not models: none is drawn in a model's colour.
    drawn = {to_hex(line.get_color()) for line in ax.get_lines()[1:]}
    assert len(drawn) == 2 and not drawn & {figures.model_color(i).lower() for i in range(8)}
    model["anomaly"] = {
        "split": "anomaly",
        "ap": 0.25,
        "auroc": 0.75,
        "histograms": {"edges": [0.0, 0.5, 1.0], "normal": [5, 1], "anomaly": [1, 2]},
    }
    figure = figures.anomaly_histograms([model])
    assert figure is not None
    assert figure.axes[0].get_title() == "a: AP 0.250, AUROC 0.750"
    measure = model["uncertainty_source"]
    assert figure.axes[0].get_xlabel() == f"anomaly score: uncertainty ({measure})"


def test_image_scores_of_every_clean_split_are_blue() -> None:
    """A set scored against val (rain) makes val in-distribution, as the main reference."""
    result = {"best_aggregator": "mean", "by_aggregator": {"mean": {"auroc": 0.9}}}
    model = {
        "name": "a",
        "ood": {
            "reference": "test",
            "aggregators": ["mean"],
            "sets": {
                "fog": {**result, "reference": "test"},
                "rain": {**result, "reference": "val"},
            },
            "image_scores": {s: {"mean": [0.1, 0.2]} for s in ("test", "val", "fog", "rain")},
        },
    }
    figure = figures.ood_score_distributions(model)
    assert figure is not None
    colours = [
        to_hex(dots.get_facecolor()[0], keep_alpha=False) for dots in figure.axes[0].collections
    ]
    assert colours == ["#0072b2", "#0072b2", "#d55e00", "#d55e00"]


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path: Path) -> None:
    """A name from a file with two `$` (`run$a_b$`) was parsed as mathtext and failed the
    whole figure ("Double subscript"); it is drawn as plain text, in every figure."""
    models = [
        curve_model("run$a_b_c$", 0.05, 0.7, 0.2, ood=True),
        curve_model("x$^2_1$", 0.15, 0.6, 0.4, ood=True),
    ]
    models[1]["class_names"] = ["ro$a_b_c$d", "car"]
    drawn = {
        "reliability": figures.reliability_diagram(models, "test"),
        "roc": figures.misclassification_roc(models, "test"),
        "histograms": figures.uncertainty_histograms(models, "test"),
        "miou": figures.miou_per_split(models),
        "ood_bars": figures.ood_auroc_bars(models),
        "ood_roc": figures.ood_roc_curves(models[0]),
    }
    for name, figure in drawn.items():
        assert figure is not None, name
        assert figures.png_bytes(figure)[:4] == b"\x89PNG", name
        figures.save(figure, tmp_path / f"{name}.png")
    figure = figures.reliability_diagram(models, "test")
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "run$a_b_c$ (student)  ECE 0.0500" in legend
    # The rc setting is restored: a user's own mathtext still works after a save.
    import matplotlib

    assert matplotlib.rcParams["text.parse_math"] is True


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_out_folder_that_cannot_be_made_is_a_one_line_error(
    setup: dict[str, Any], tmp_path: Path, capsys
) -> None:
    """/proc takes no new folder (root included): a stand-in for a read-only mount or a
    folder without write permission. With a run directory among the sources the
    evaluation ran to its end and wrote the run's metrics.json, then mkdir's
    FileNotFoundError for --out came out of main as a traceback (exit status 1); a loose
    weights file alone gets `error: cannot write ...` (atomic_write's OutputError)."""
    run = tmp_path / "dudes"
    shutil.copytree(setup["root"] / "dudes" / "checkpoints", run / "checkpoints")
    out = Path("/proc/segdistill-cannot-be-made")
    argv = ["evaluate", str(run), "--data", str(setup["data"]), "--splits", "test"]
    argv += ["--max-images", "1", "--workers", "0", "--device", "cpu", "--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # refused when parsed: as good
        code = exit_info.code
    assert code == 2
    error = capsys.readouterr().err
    assert str(out) in error and "Traceback" not in error


def test_an_out_folder_that_is_a_models_own_directory_is_refused(setup: dict[str, Any]) -> None:
    """--out RUN: the comparison figures (reliability.png, ...) would overwrite RUN's own
    figures of the same names, and its metrics.json would point at them."""
    root = setup["root"]
    before = {p: p.read_bytes() for p in (root / "dudes" / "figures").glob("*.png")}
    for out in (root / "dudes", root / "ens"):
        with pytest.raises(ConfigError, match=rf"--out {out} is the directory of {out.name}"):
            evaluate([root / "ens", root / "dudes"], setup["data"], out_dir=out, progress=False)
    assert before and all(p.read_bytes() == data for p, data in before.items())


# ----------------------------------------------------------------------------------------
# Layout: what a reader sees (drawn as `figures.save` draws them)
# ----------------------------------------------------------------------------------------

# Names of the Cityscapes classes, as a 19-class model's metrics carry them.
NINETEEN = [f"class {c}" for c in range(19)]


def small_uncertainty_model() -> dict[str, Any]:
    """A results.json model with the small numbers of an ensemble's pred_std and of an
    untrained network's mIoU (tick labels such as 0.0075 and 0.0004 are wide), as the
    demo's models have them."""
    removed = [k / 10 for k in range(10)]
    per_class = [0.0106 if c % 3 == 0 else None for c in range(19)]
    edges = list(np.linspace(0.0, 1.0, 51))
    counts = np.zeros((50, 50), np.int64)
    counts[0, 20:24] = [10, 1_000, 100_000, 3]  # teacher bin 0, student 0.40-0.48
    paired = {
        "pearson": -0.064,
        "hist2d": {
            "teacher_edges": edges,
            "student_edges": edges,
            "correct": counts.tolist(),
            "wrong": (counts * 2).tolist(),
        },
    }
    return {
        "name": "holder",
        "kind": "student",
        "uncertainty_source": "student head (per-class, predicted class)",
        "class_names": NINETEEN,
        "splits": {
            "test": {
                "num_pixels": 100,
                "uncertainty": {
                    "per_class_mean": per_class,
                    "miou_vs_removed": {
                        "removed_fraction": removed,
                        "miou": list(np.linspace(0.0031, 0.0095, 10)),
                        "iou": [[0.01] * 19 for _ in removed],
                    },
                },
            }
        },
        "vs_teacher": {"teacher": "ensemble", "splits": {"test": {"paired": paired}}},
        "ood": {
            "reference": "test",
            "aggregators": ["min"],
            "sets": {"night": {"best_aggregator": "min", "by_aggregator": {"min": {}}}},
            "image_scores": {
                "test": {"min": [1e-6, 2e-6, 3e-6]},
                "night": {"min": [4.2e-4, 2e-4, 3e-5]},
            },
        },
    }


def sample_figure_of_a_per_class_student() -> Any:
    rng = np.random.default_rng(0)
    return figures.sample_predictions(
        ["frankfurt_000000_000019"],
        [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)],
        [rng.integers(0, 19, (16, 32))],
        [rng.integers(0, 19, (16, 32))],
        [rng.random((16, 32))],
        title="holder: test images",
        uncertainty_source="student head (per-class, predicted class)",
        class_names=NINETEEN,
    )


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(lambda m: figures.miou_vs_removed([m], "test"), id="miou_vs_removed"),
        pytest.param(lambda m: figures.per_class_uncertainty([m], "test"), id="per_class"),
        pytest.param(lambda m: figures.ood_score_distributions(m), id="ood_scores"),
        pytest.param(lambda m: figures.teacher_student_hist2d([m], "test"), id="hist2d"),
        pytest.param(lambda m: sample_figure_of_a_per_class_student(), id="samples"),
        # A figure that fits: the check passes what is inside.
        pytest.param(
            lambda m: figures.reliability_diagram([curve_model("a", 0.05, 0.7, 0.2, False)]),
            id="reliability",
        ),
    ],
)
def test_no_text_is_drawn_past_the_edge_of_the_figure(draw: Any) -> None:
    """Axis labels, colour-bar labels and tick labels lie inside the canvas: figures have
    fixed margins in inches (no layout engine), so a wide tick label (0.0075, 0.0004) or a
    long measure name ("student head (per-class, predicted class)") pushed the y label of
    miou_vs_removed, per_class_uncertainty and ood_scores past the left edge, the colour
    bar's label of the sample figure past the right edge and the colour bars' ticks of
    hist2d past the right and bottom edges: cut off in the PNG and the report."""
    figure = draw(small_uncertainty_model())
    saved = Image.open(io.BytesIO(figures.png_bytes(figure)))  # text as written
    with figures.plain_text():
        tight = figure.get_tightbbox(figure.canvas.get_renderer())
    width, height = figure.get_size_inches()
    # The saved picture holds the canvas and every drawn text (grown where text reaches
    # past the margins): at least the union of the two, in pixels.
    needed_width = (max(width, tight.x1) - min(0.0, tight.x0)) * figure.dpi
    needed_height = (max(height, tight.y1) - min(0.0, tight.y0)) * figure.dpi
    assert saved.width >= needed_width - 1 and saved.height >= needed_height - 1
    # A figure whose text fits keeps its planned size.
    fits = tight.x0 >= 0 and tight.y0 >= 0 and tight.x1 <= width and tight.y1 <= height
    if fits:
        assert abs(saved.width - width * figure.dpi) <= 1
        assert abs(saved.height - height * figure.dpi) <= 1


def test_hist2d_colour_bars_label_their_ticks_with_numbers() -> None:
    """The log colour bars' ticks are drawn as numbers (10, 100, 10^3), not as the source of
    a formula: `figures.save` draws every text as written (parse_math off), and
    LogFormatterSciNotation's labels then read "$\\mathdefault{10^{2}}$" in the PNG."""
    figure = figures.teacher_student_hist2d([small_uncertainty_model()], "test")
    figures.png_bytes(figure)
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    labels = [text for ax in bars for text in ax.yaxis.get_ticklabels() if text.get_text()]
    assert labels
    raw = [t.get_text() for t in labels if "$" in t.get_text() and not t.get_parse_math()]
    assert raw == []
    # Every teacher value lies in the first of its 50 bins: one column, said on each panel.
    # The student's spread over 4 bins is shown, so nothing is said of it.
    notes = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert notes == ["teacher: all values in [0, 0.02)"] * 2
    # The other way round: the teacher spread over 4 bins, every student value in one.
    model = small_uncertainty_model()
    hist = model["vs_teacher"]["splits"]["test"]["paired"]["hist2d"]
    for key in ("correct", "wrong"):
        hist[key] = np.asarray(hist[key]).T.tolist()
    figure = figures.teacher_student_hist2d([model], "test")
    notes = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert notes == ["student: all values in [0, 0.02)"] * 2


def test_a_model_keeps_its_colour_in_its_own_figures(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model is drawn in one colour in the comparison figures and in its own figures
    (figures/<model>/reliability.png: the teacher's curve beside its own). Colours went
    by position in the figure, so with a teacher, a baseline and a student the student
    was green in the comparison figures and orange in its own, where orange is the
    baseline's colour everywhere else: three models were orange in one evaluation."""
    for name in ("ens", "dudes"):
        shutil.copytree(
            setup["root"] / name,
            tmp_path / name,
            ignore=shutil.ignore_patterns(METRICS_FILE, "figures"),
        )
    colours: dict[str, dict[str, str]] = {}  # figure file -> model name -> line colour

    def record(figure: Any, path: Path) -> Path:
        if path.name == "reliability.png":
            (ax,) = figure.axes
            labels = [t.get_text().split()[0] for t in ax.get_legend().get_texts()][1:]
            lines = [to_hex(line.get_color()) for line in ax.get_lines()[1:]]
            colours[str(path.relative_to(tmp_path / "out"))] = dict(zip(labels, lines))
        return path

    monkeypatch.setattr("segdistill.evaluate._save", record)
    results = evaluate(
        [tmp_path / "ens", tmp_path / "ens" / "member_0", tmp_path / "dudes"],
        setup["data"],
        splits=["test"],
        max_images=1,
        out_dir=tmp_path / "out",
        num_samples=1,
        progress=False,
        device="cpu",
        write_homes=False,
    )
    # The member's 1 - max softmax is on another scale than the ensemble's pred_std: no
    # uncertainty difference is stored for it; the student head's is.
    member, student = results["models"][1], results["models"][2]
    assert set(member["vs_teacher"]["splits"]["test"]["per_class_mean_uncertainty"]) == {None}
    assert member["vs_teacher"]["splits"]["test"]["class_mean_uncertainty"] is None
    assert student["vs_teacher"]["splits"]["test"]["class_mean_uncertainty"] is not None
    comparison = colours.pop("figures/reliability.png")
    assert len(comparison) == 3 and len(set(comparison.values())) == 3
    assert colours  # the models' own figures
    for own in colours.values():
        assert own == {name: comparison[name] for name in own}


def test_per_class_uncertainty_draws_each_scale_of_uncertainty_on_its_own_axis() -> None:
    """An ensemble's pred_std (about 0.05) and a baseline's 1 - max softmax (about 0.9) on
    one y axis left the ensemble's bars invisible. The std-like measures (the teacher's
    and the heads trained on it) share a panel, Table 2's comparison; the softmax one has
    its own, and every model keeps its colour."""

    def model(name: str, source: str, value: float) -> dict[str, Any]:
        per_class = [value, None, value / 2]
        return {
            "name": name,
            "kind": "student",
            "uncertainty_source": source,
            "class_names": ["a", "b", "c"],
            "splits": {"test": {"num_pixels": 1, "uncertainty": {"per_class_mean": per_class}}},
        }

    models = [
        model("ensemble", "ensemble pred_std", 0.05),
        model("baseline", "1 - max softmax", 0.9),
        model("dudes", "student head (scalar)", 0.04),
    ]
    figure = figures.per_class_uncertainty(models, "test")
    panels = [ax for ax in figure.axes if ax.get_legend() is not None]
    legends = [[t.get_text().split()[0] for t in ax.get_legend().get_texts()] for ax in panels]
    assert legends == [["ensemble", "dudes"], ["baseline"]]
    assert "pred_std" in panels[0].get_ylabel() and "1 - max softmax" in panels[1].get_ylabel()
    assert panels[0].get_ylim()[1] < 0.1  # the std panel is scaled to the std values
    heights = {round(p.get_height(), 6) for p in panels[0].patches if not np.isnan(p.get_height())}
    assert heights == {0.05, 0.025, 0.04, 0.02}
    # Colours as in the comparison's order: the baseline is the second model, dudes the third.
    colours = [to_hex(ax.patches[0].get_facecolor()) for ax in panels]
    assert colours == [figures.model_color(0).lower(), figures.model_color(1).lower()]
    # Each panel's bars share the 0.8 of a class's slot among its own models: two bars of
    # 0.4 at -0.2 and +0.2 beside the tick above, one of 0.8 on the tick below.
    for ax, widths, centres in ((panels[0], 0.4, [-0.2, 0.2]), (panels[1], 0.8, [0.0])):
        first_class = ax.patches[:: len(models[0]["class_names"])]  # each model's class a
        assert [p.get_width() for p in first_class] == pytest.approx([widths] * len(centres))
        got = [p.get_x() + p.get_width() / 2 for p in first_class]
        assert got == pytest.approx(centres)


def slotted_model(name: str) -> dict[str, Any]:
    """curve_model with the miou_vs_removed curve and per-class means that the per-model
    figures read."""
    model = curve_model(name, 0.05, 0.7, 0.2, ood=False)
    uncertainty = model["splits"]["test"]["uncertainty"]
    uncertainty["miou_vs_removed"] = {
        "removed_fraction": [0.0, 0.5],
        "miou": [0.5, 0.6],
        "iou": [[0.5, 0.5], [0.6, 0.6]],
    }
    uncertainty["per_class_mean"] = [0.3, 0.2]
    return model


def test_every_model_figure_draws_a_model_in_the_colour_of_its_slot() -> None:
    """A teacher (slot 2 of the comparison) and a student (slot 0) in the student's own
    figures: each in its comparison colour, in every figure that draws models, not in
    the first two colours by position."""
    models = [slotted_model("t"), slotted_model("s")]
    slots = [2, 0]
    expected = [FIRST_COLOURS[2], FIRST_COLOURS[0]]
    for draw in (figures.reliability_diagram, figures.misclassification_roc):
        (ax,) = draw(models, "test", slots=slots).axes
        assert [to_hex(line.get_color()) for line in ax.get_lines()[1:]] == expected
    (ax,) = figures.miou_vs_removed(models, "test", slots=slots).axes
    assert [to_hex(line.get_color()) for line in ax.get_lines()] == expected
    for figure in (
        figures.iou_after_removal(models, "test", slots=slots),
        figures.per_class_uncertainty(models, "test", slots=slots),
    ):
        assert figure is not None
        (ax,) = [ax for ax in figure.axes if ax.get_legend() is not None]
        colours = [to_hex(bar.get_facecolor(), keep_alpha=False) for bar in ax.patches]
        assert colours == [expected[0]] * 2 + [expected[1]] * 2  # two classes each
    with pytest.raises(ValueError, match="2 models but 1 slots"):
        figures.reliability_diagram(models, "test", slots=[0])


def test_model_figures_pass_the_slots_to_every_figure_of_several_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: dict[str, Any] = {}
    for name in (
        "reliability_diagram",
        "misclassification_roc",
        "miou_vs_removed",
        "iou_after_removal",
        "per_class_uncertainty",
    ):
        monkeypatch.setattr(
            figures, name, lambda models, slots=None, name=name: drawn.update({name: slots})
        )
    for name in ("uncertainty_histograms", "teacher_student_hist2d", "anomaly_histograms"):
        monkeypatch.setattr(figures, name, lambda models: None)
    for name in ("ood_roc_curves", "ood_score_distributions"):
        monkeypatch.setattr(figures, name, lambda model: None)
    assert list(figures.model_figures([{}, {}], [3, 1])) == []
    assert len(drawn) == 5 and all(slots == [3, 1] for slots in drawn.values())


@pytest.mark.parametrize(
    ("x", "y", "align", "side"),
    [
        (-0.2, 0.5, {"ha": "right"}, "left"),
        (1.2, 0.5, {"ha": "left"}, "right"),
        (0.5, -0.2, {"va": "top"}, "bottom"),
        (0.5, 1.2, {"va": "bottom"}, "top"),
    ],
)
def test_the_saved_picture_grows_on_the_side_text_reaches_past(
    x: float, y: float, align: dict[str, str], side: str
) -> None:
    """Text past one edge of the canvas grows the saved picture on that side (by the
    text's extent and a pad) and on no other; a figure whose text fits is not grown."""
    figure, (ax,) = figures.axes_grid(1, 1, (3.0, 2.0))
    ax.set_xticks([])
    ax.set_yticks([])
    assert figures._grown(figure) is None
    text = figure.text(x, y, "a label past the edge", **align)
    width, height = figure.get_size_inches()
    box = figures._grown(figure)
    assert box is not None
    extent = text.get_window_extent(figure.canvas.get_renderer())
    left, bottom = extent.x0 / figure.dpi, extent.y0 / figure.dpi
    right, top = extent.x1 / figure.dpi, extent.y1 / figure.dpi
    expected = {
        "left": min(0.0, left) if side == "left" else 0.0,
        "bottom": min(0.0, bottom) if side == "bottom" else 0.0,
        "right": max(width, right) if side == "right" else width,
        "top": max(height, top) if side == "top" else height,
    }
    got = {"left": box.x0, "bottom": box.y0, "right": box.x1, "top": box.y1}
    for edge in got:
        if edge == side:  # grown past the text, by a small pad (0.06 inches)
            outward = -1 if edge in ("left", "bottom") else 1
            assert got[edge] == pytest.approx(expected[edge] + outward * 0.06, abs=0.01)
        else:
            assert got[edge] == pytest.approx(expected[edge])


def test_no_uncertainty_difference_is_stored_between_two_scales() -> None:
    """metrics.json's student - teacher uncertainty differences are None for a model whose
    measure is on another scale than the teacher's (1 - max softmax against pred_std);
    the IoU differences stay. Same-scale measures are subtracted."""
    from segdistill.evaluate import class_differences

    def result(iou: list[float], unc: list[float | None]) -> dict[str, Any]:
        return {
            "segmentation": {"iou": iou, "miou": sum(iou) / len(iou)},
            "uncertainty": {"per_class_mean": unc, "class_mean": 0.5, "pixel_mean": 0.25},
        }

    baseline, teacher = result([0.5, 0.75], [0.9, 0.875]), result([0.25, 0.5], [0.25, None])
    apart = class_differences(baseline, teacher, same_scale=False)
    assert apart["iou"] == [0.25, 0.25] and apart["miou"] == 0.25
    assert apart["per_class_mean_uncertainty"] == [None, None]
    assert apart["class_mean_uncertainty"] is None and apart["pixel_mean_uncertainty"] is None
    together = class_differences(baseline, teacher)
    assert together["per_class_mean_uncertainty"] == [0.65, None]
    assert together["class_mean_uncertainty"] == 0.0


def test_the_hist2d_diagonal_is_drawn_only_between_measures_of_one_scale() -> None:
    """y = x compares a head trained on the teacher's pred_std with that std; against a
    baseline's 1 - max softmax it is a line near 0 that reads as data."""

    def dashed(model: dict[str, Any]) -> int:
        figure = figures.teacher_student_hist2d([model], "test")
        return sum(line.get_linestyle() == "--" for ax in figure.axes for line in ax.get_lines())

    student = small_uncertainty_model()
    student["vs_teacher"]["teacher_uncertainty_source"] = "ensemble pred_std"
    assert dashed(student) == 2  # correct and wrong panels
    baseline = copy.deepcopy(student)
    baseline["uncertainty_source"] = "1 - max softmax"
    assert dashed(baseline) == 0


def test_the_class_count_labels_of_two_models_at_one_point_do_not_overlap(
    setup: dict[str, Any],
) -> None:
    """Two curves through the same point labelled "9/19" each: the labels lay on each
    other. Each model's labels sit one line higher than the previous model's."""
    model = copy.deepcopy(setup["results"]["models"][-1])
    curve = model["splits"]["test"]["uncertainty"]["miou_vs_removed"]
    curve["iou"] = [[0.5] * 19 for _ in curve["removed_fraction"]]
    curve["iou"][-1][:10] = [None] * 10
    curve["miou"] = [0.5 for _ in curve["removed_fraction"]]
    other = copy.deepcopy(model)
    other["name"] = "other"
    figure = figures.miou_vs_removed([model, other], "test")
    figures.png_bytes(figure)
    (ax,) = figure.axes
    marks = [t for t in ax.texts if t.get_text() == "9/19"]
    assert len(marks) == 2
    first, second = (mark.get_window_extent() for mark in marks)
    assert not first.overlaps(second)
