"""The experiment pipeline (`segdistill demo`, `segdistill experiment`).

End to end: the demo config at a tiny size (32x64 SynthStreets, 2 members, width 0.125,
one short epoch) from nothing to results.json and report.html; the results schema; a
re-run that skips every step; a run that continues after an interruption. Unit tests:
every experiment config in configs/ loads and plans, config errors, the checks.
The full-size demo is marked slow.
"""

from __future__ import annotations

import dataclasses
import fcntl
import html
import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image

from segdistill.checkpoints import build_model, load_segmenter
from segdistill.cli import main
from segdistill.config import SegConfig, dump_config, replace_values
from segdistill.data.synthstreets import SynthConfig, generate
from segdistill.defaults import DETECTOR_FILE, RESUME_CHECKPOINT
from segdistill.errors import ConfigError, DataError
from segdistill.ood_detector import ImageOODDetector
from segdistill.output_paths import folder_user
from segdistill.pipeline import evaluation as pipeline_evaluation
from segdistill.pipeline import networks as pipeline_networks
from segdistill.pipeline import run as pipeline_run
from segdistill.pipeline.checks import metric_value, model_value, run_check
from segdistill.pipeline.evaluation import _ablation_rows, fit_ood_detectors, flagged_shares
from segdistill.pipeline.experiment import (
    AblationSpec,
    CheckSpec,
    Experiment,
    LoadedExperiment,
    TableSpec,
    UnlabeledSpec,
    load_experiment,
)
from segdistill.pipeline.networks import (
    baseline_config,
    check_finished_networks,
    check_split_names,
    check_unlabeled_apart,
    prepare_unlabeled,
    pretrain_teacher_config,
    student_config,
    teacher_config,
    teacher_networks,
)
from segdistill.pipeline.results import (
    _check_line,
    _ood_flag_cells,
    _speed,
    _table_cells,
    experiment_claims,
    format_markdown,
    format_summary,
    paper_table,
    table_caption,
    write_results,
)
from segdistill.pipeline.run import plan, run_pipeline
from segdistill.pipeline.run_dir import RunPaths, Step, claim_run_dir, why_again

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "quick" / "demo.yaml"
# Experiment configs (the training configs beside them have no teacher section).
EXPERIMENT_CONFIGS = [
    path
    for path in sorted((REPO / "configs").glob("*/*.yaml"))
    if "teacher" in yaml.safe_load(path.read_text())
]
NUM_CLASSES = 19


def tiny_demo_args(data_root: Path, run_dir: Path) -> list[str]:
    """`segdistill demo` at a tiny size: the demo config with its sizes overridden."""
    return [
        "demo",
        "--config",
        str(DEMO_CONFIG),
        "--run-dir",
        str(run_dir),
        "--members",
        "2",
        "--set",
        f"data.root={data_root}",
        "data.synth={size: [32, 64], train: 8, val: 2, test: 3, seed: 0}",
        "set.model.encoder_options.width=0.125",
        "set.data.crop_size=[32,64]",
        "set.data.scale_range=[1.0,1.0]",
        "set.data.batch_size=4",
        "set.trainer.max_epochs=1",
        "set.trainer.limit_val_batches=1",
        "set.trainer.accelerator=cpu",
        "evaluate.max_images=3",
        "evaluate.num_samples=1",
        "bench.size=[32,64]",
        "bench.repeats=1",
        "bench.warmup=0",
    ]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The tiny demo run once (its arguments, its run directory)."""
    base = tmp_path_factory.mktemp("demo")
    args = tiny_demo_args(base / "data", base / "run")
    assert main(args) == 0
    return args, base / "run"


def test_results_schema(tiny_demo: tuple[list[str], Path]) -> None:
    """Every model has every number the issue lists; config and versions are recorded."""
    _, run_dir = tiny_demo
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema"] == "segdistill.experiment/1"
    assert set(results["versions"]) >= {"torch", "segdistill", "python", "platform"}
    assert results["experiment"]["config"]["teacher"]["members"] == 2
    assert set(results["experiment"]["networks"]) == {"ensemble", "dudes", "holder"}
    assert results["experiment"]["pretrain"] is None  # the demo has no pretrain section
    assert results["experiment"]["pretrain_teacher"] is None
    default_device = "cuda" if torch.cuda.is_available() else "cpu"  # evaluate.device: null
    assert results["evaluation"]["settings"]["device"] == default_device
    assert results["evaluation"]["settings"]["max_images"] == 3
    shifted = [s for s in results["data"]["splits"] if s not in ("test", "anomaly")]
    assert {"fog_0.02", "rain", "night", "newcity"} <= set(shifted)
    models = {m["name"]: m for m in results["models"]}
    assert set(models) == {"ensemble", "baseline", "dudes", "holder"}
    assert {m["role"] for m in models.values()} == {"teacher", "baseline", "student"}
    for model in models.values():
        test = model["splits"]["test"]
        assert set(test["segmentation"]) >= {"miou", "iou"}
        assert len(test["segmentation"]["iou"]) == NUM_CLASSES
        assert "ece" in test["calibration"]
        uncertainty = test["uncertainty"]
        assert len(uncertainty["per_class_mean"]) == NUM_CLASSES
        assert set(uncertainty["misclassification"]) >= {"auroc", "aupr", "fpr95"}
        assert "max" in uncertainty["pavpu"] and "aurc" in uncertainty
        curve = uncertainty["miou_vs_removed"]
        assert len(curve["removed_fraction"]) == len(curve["miou"]) > 1
        for name in shifted:
            aggregators = model["ood"]["sets"][name]["by_aggregator"]
            assert all("auroc" in entry for entry in aggregators.values())
        assert "ap" in model["anomaly"]
        assert model["parameters"] > 0
        speed = model["speed"]
        assert speed["latency_ms"]["median"] > 0
        assert set(speed) >= {"latency_vs_teacher", "latency_vs_baseline", "gflops_per_image"}
    assert {r["ratio"] for r in results["bench"]["ratios"]} == {
        "teacher/student",
        "student/baseline",
    }
    table = results["table"]
    assert [row[0] for row in table["rows"]] == list(models)
    assert len(table["rows"][0]) == len(table["columns"])
    assert {c["name"] for c in results["checks"]} >= {
        "DUDES student mIoU >= baseline mIoU - 1 point"
    }
    assert all(isinstance(c["passed"], bool) for c in results["checks"])


def _doc_block(doc: str, heading: str) -> str:
    """The first ``` block after `heading` in docs/`doc`."""
    text = (REPO / "docs" / doc).read_text()
    start = text.index("```", text.index(heading)) + 3
    return text[start : text.index("```", start)]


def _braced(block: str, name: str) -> set[str]:
    """The keys the block gives in the first "{...}" after `name`: the names that open an
    item of it ("{a, b {...}, c | d}" gives a, b, c, d); remarks "(...)", shapes and
    examples "[...]", placeholders "<...>" and deeper levels left out."""
    at = re.search(rf"(?<![\w.]){re.escape(name)}\s*:?\s*\[?\{{", block)
    assert at, name
    depth, body = 1, ""
    for char in block[at.end() :]:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            break
        body += char if depth == 1 else ""
    remark = r"\([^()]*\)|\[[^\[\]]*\]|<[^<>]*>"
    while re.search(remark, body):
        body = re.sub(remark, "", body)
    return set(re.findall(r"(?:^|[,|])\s*([A-Za-z_]\w*)", body))


def test_the_documented_results_layout_is_what_the_demo_writes(
    tiny_demo: tuple[list[str], Path],
) -> None:
    """docs/experiments.md writes out results.json by hand: its top-level keys and those
    of every record it lists in braces are the ones the run writes."""
    block = _doc_block("experiments.md", "## results.json")
    results = json.loads((tiny_demo[1] / "results.json").read_text())
    assert re.findall(r"^([a-z_]+)\s", block, re.M) == list(results)
    model = next(m for m in results["models"] if m["role"] == "student")
    written = {
        "experiment": results["experiment"],
        "versions": results["versions"],
        "data": results["data"],
        "evaluation": results["evaluation"],
        "settings": results["evaluation"]["settings"],
        "bench": results["bench"],
        "table": results["table"],
        "checks": {key for check in results["checks"] for key in check},
        "speed": model["speed"],
        "latency_ms": model["speed"]["latency_ms"],
        "ood_flag": model["ood_flag"],
    }
    # a per-class check adds these; a check on several seeds or a latency ratio the rest
    optional = {"of", "defined", "min_count", "per_seed", "interval_95", "unresolved"}
    for name, value in written.items():
        documented = _braced(block, name)
        if name == "checks":
            assert {"model", "models"} & value and documented - {"model", "models"} <= value
            assert value - {"model", "models"} <= documented | optional
        else:
            assert documented == set(value), name
    # a model: the top level of its metrics.json (docs/evaluation.md) and what the run adds
    metrics = _doc_block("evaluation.md", "### metrics.json (one model)")
    evaluated = re.findall(r"^([a-z_]+(?:, [a-z_]+)*)  ", metrics, re.M)
    added = {"role", "label", "seed_offset", "speed", "ood_flag"}
    assert set(", ".join(evaluated).split(", ")) | added == set(model)
    flags = json.loads((tiny_demo[1] / "ood_detectors.json").read_text())  # as ood_flag
    assert {name: set(flag) for name, flag in flags.items()} == {
        m["name"]: set(m["ood_flag"]) for m in results["models"]
    }


def test_every_stage_marker_has_the_documented_keys(tiny_demo: tuple[list[str], Path]) -> None:
    """docs/experiments.md lists the keys of a `stages/<step>.json` marker: every marker
    of the demo holds them, and the teacher's adds what its step returned."""
    block = _doc_block("experiments.md", "## Run directory")
    entry = block[block.index("stages/<step>.json") : block.index("pretrain/")]
    named = _braced(entry, "step")
    assert {"step", "seconds", "inputs", "optional_inputs"} <= named  # read as keys
    markers = {p.stem: json.loads(p.read_text()) for p in (tiny_demo[1] / "stages").glob("*.json")}
    assert "teacher" in markers
    for step, marker in markers.items():
        assert named <= set(marker), step
        assert marker["step"] == step
    assert {"run_dir", "members"} <= set(markers["teacher"])


def test_every_model_gets_an_ood_flag_fitted_on_the_validation_images(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir = tiny_demo
    results = json.loads((run_dir / "results.json").read_text())
    homes = {
        "ensemble": run_dir / "teacher",
        "baseline": run_dir / "teacher" / "member_00",
        "dudes": run_dir / "students" / "dudes",
        "holder": run_dir / "students" / "holder",
    }
    for model in results["models"]:
        flag = model["ood_flag"]
        detector = ImageOODDetector.load(homes[model["name"]] / DETECTOR_FILE)
        assert run_dir / flag["file"] == homes[model["name"]] / DETECTOR_FILE
        assert (flag["threshold"], flag["reference_split"]) == (detector.threshold, "val")
        assert detector.reference_images == 2 and detector.model == model["name"]
        # Its share of each evaluated split, recounted from the evaluation's image scores.
        for split, scores in model["ood"]["image_scores"].items():
            values = np.array(scores[detector.aggregator])
            assert flag["flagged"][split] == np.count_nonzero(values > flag["threshold"]) / len(
                values
            )
    # The same weights: the saved detector works with `predict` on the model's directory.
    images = run_dir.parent / "data" / "leftImg8bit" / "test"
    argv = ["predict", str(homes["dudes"]), str(images), "--out", str(run_dir / "p")]
    assert (
        main([*argv, "--outputs", "none", "--ood-detector", str(homes["dudes"] / DETECTOR_FILE)])
        == 0
    )
    out = capsys.readouterr().out
    assert "images flagged as unlike the reference images" in out
    title = "images flagged as OOD (each model's threshold: at most 5% of the 2 val images"
    assert title in (run_dir / "table.md").read_text()
    # The Holder student's flag aggregates eq. 8's map, and the title says so.
    own_map = "(holder: student head (per-class, mean over the classes: Holder eq. 8));"
    assert own_map in (run_dir / "table.md").read_text()
    report = (run_dir / "report.html").read_text()
    claims = report[report.index('<section id="claims"') : report.index('<section id="summary"')]
    assert html.escape(title) in claims
    assert claims.count("<table") == 3  # the paper table, the OOD flags, the steps


def test_ood_flag_table_counts_the_scores_above_the_threshold() -> None:
    shares = flagged_shares(0.5, {"fog": [0.4, 0.5, 0.7, 0.9], "empty": []})
    assert shares == {"fog": 0.5}  # strictly above the threshold; a split without images: none
    # A split of one image has its share too, over its own images only.
    assert flagged_shares(0.5, {"one": [0.7], "low": [0.1, 0.2]}) == {"one": 1.0, "low": 0.0}
    flag = {"threshold": 0.5, "flagged": shares}
    model = {"name": "m", "seed_offset": 0, "ood_flag": flag}
    assert _ood_flag_cells({"models": [model]}) == [
        ["model", "threshold", "fog"],
        ["m", "0.5", "50%"],
    ]
    # A paper config evaluates only the validation split, which the step leaves out: no table.
    only_val = {**model, "ood_flag": {**flag, "flagged": {}}}
    assert _ood_flag_cells({"models": [only_val]}) is None


def test_ablation_rows_read_each_models_metrics(tiny_demo: tuple[list[str], Path]) -> None:
    _, run_dir = tiny_demo
    results = json.loads((run_dir / "results.json").read_text())
    names = [("model", m["name"]) for m in results["models"]]
    # An ablation's split need not be test: each row is of the split asked for.
    for split in ("test", "night"):
        rows = _ablation_rows(results, split, names)
        for row, model in zip(rows, results["models"], strict=True):
            test = model["splits"][split]
            curve = test["uncertainty"]["miou_vs_removed"]
            half = curve["removed_fraction"].index(0.5)
            assert row["model"] == model["name"]
            assert row["parameters"] == model["parameters"]
            assert row["miou"] == test["segmentation"]["miou"]
            misclassification = test["uncertainty"]["misclassification"]["auroc"]
            assert row["misclassification_auroc"] == misclassification
            assert row["ece"] == test["calibration"]["ece"]
            gain = curve["miou"][half] - curve["miou"][0]
            assert row["miou_gain_removed_50"] == pytest.approx(gain)
    eces = {
        split: [m["splits"][split]["calibration"]["ece"] for m in results["models"]]
        for split in ("test", "night")
    }
    assert eces["test"] != eces["night"]  # the splits are told apart


def test_ood_flags_count_the_images_the_evaluation_used(
    tiny_demo: tuple[list[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With evaluate.max_images=2 (of 3 test images), each split's flag share is of its
    first 2 images, the ones the evaluation scored; the validation split the flags are
    fitted on is left out (at most 5 % flagged there by construction)."""
    args, run_dir = tiny_demo
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = args[args.index("--set") + 1 :] + ["teacher.members=2", "evaluate.max_images=2"]
    experiment = load_experiment(DEMO_CONFIG, overrides)
    paths = RunPaths(copy)
    evaluation = json.loads((paths.evaluation / "results.json").read_text())
    evaluation["data"]["splits"] = ["val", "test", "night"]
    (paths.evaluation / "results.json").write_text(json.dumps(evaluation))
    scored: dict[str, list[tuple[list[Path], list[float]]]] = {}
    score_images = pipeline_evaluation.score_images

    def recorded(predictor, files, aggregator, **options):  # type: ignore[no-untyped-def]
        scores = score_images(predictor, files, aggregator, **options)
        scored.setdefault(predictor.name, []).append(([Path(f) for f in files], scores))
        return scores

    monkeypatch.setattr(pipeline_evaluation, "score_images", recorded)
    fit_ood_detectors(experiment, paths)
    data = Path(experiment.spec.data.root)
    first = [
        sorted((tree / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png"))[:2]
        for tree in (data, data / "shifts" / "night")
    ]
    detectors = json.loads(paths.ood_detectors.read_text())
    assert set(detectors) == {"ensemble", "baseline", "dudes", "holder"}
    for name, detector in detectors.items():
        assert [files for files, _ in scored[name]] == first
        shares = {
            split: np.count_nonzero(np.array(scores) > detector["threshold"]) / 2
            for split, (_, scores) in zip(("test", "night"), scored[name], strict=True)
        }
        assert detector["flagged"] == shares


def test_ablations_evaluate_sub_ensembles_and_train_a_sweep(tmp_path: Path, capsys) -> None:
    # DUDES Fig. 5 (the first k members) and NfS Fig. 8 (a student key swept), tiny.
    args = tiny_demo_args(tmp_path / "data", tmp_path / "run")
    args.append(
        "ablations=[{name: members, kind: sub_ensembles, sizes: [1, 2]}, {name: width, "
        "kind: sweep, student: dudes, key: model.encoder_options.width, values: [0.125, 0.25]},"
        " {name: seed, kind: sweep, student: dudes, key: seed, values: [0, 7]}]"
    )
    assert main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    models = {m["name"]: m for m in results["models"]}

    def miou(name: str) -> float:
        return models[name]["splits"]["test"]["segmentation"]["miou"]

    members = results["ablations"]["members"]["rows"]
    assert [row["members"] for row in members] == [1, 2]
    # Two members are the teacher itself; the demo's baseline is its member 0.
    assert members[1]["miou"] == miou("ensemble")
    assert members[1]["parameters"] == models["ensemble"]["parameters"]
    assert members[0]["miou"] == miou("baseline")
    width = results["ablations"]["width"]["rows"]
    assert [row["model.encoder_options.width"] for row in width] == [0.125, 0.25]
    # At the student's own width the sweep trains the student again, to the same weights.
    assert width[0]["miou"] == miou("dudes")
    assert width[0]["parameters"] == models["dudes"]["parameters"] < width[1]["parameters"]
    assert {"ablation-members", "ablation-width-0.125", "ablation-width"} <= set(results["stages"])
    printed = capsys.readouterr().out
    table = (tmp_path / "run" / "table.md").read_text()
    for text in (printed, table):
        assert "ablation members (sub_ensembles, test)" in text
        # A sweep trains each value once, of the student's seed, unless every_seed.
        assert "ablation width (sweep, test, seed 0)" in text
        assert "ablation seed (sweep, test):" in text  # its rows name their seeds
    assert results["ablations"]["width"]["seeds"] == [0]
    assert "seeds" not in results["ablations"]["seed"]
    assert [row["seed"] for row in results["ablations"]["seed"]["rows"]] == [0, 7]
    # The HTML report shows them too (DUDES Fig. 5, NfS Fig. 8 are part of the comparison).
    page = (tmp_path / "run" / "report.html").read_text()
    assert "ablation members (sub_ensembles, test)" in page
    assert "ablation width (sweep, test, seed 0)" in page
    assert f">{members[1]['miou']:.4f}<" in page and ">0.1250<" in page


def test_every_seed_is_for_sweeps() -> None:
    with pytest.raises(ConfigError, match="every_seed is for sweeps"):
        load_experiment(
            DEMO_CONFIG,
            ["ablations=[{name: m, kind: sub_ensembles, sizes: [1, 2], every_seed: true}]"],
        )


def test_results_list_the_plans_steps_only(
    tiny_demo: tuple[list[str], Path], tmp_path: Path
) -> None:
    """A marker an earlier plan left (a sweep value since renamed) is not one of this
    run's steps: results.json listed every marker in stages/."""
    args, run_dir = tiny_demo
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "stages" / "ablation-width-1.0.json").write_text('{"seconds": 9.0}')
    overrides = args[args.index("--set") + 1 :] + ["teacher.members=2"]
    experiment = load_experiment(DEMO_CONFIG, overrides)
    paths = RunPaths(copy)
    order = [step.name for step in plan(experiment, paths)]
    write_results(experiment, paths, order)
    results = json.loads((copy / "results.json").read_text())
    assert list(results["stages"]) == [name for name in order if paths.stage(name).is_file()]
    assert "ablation-width-1.0" not in results["stages"]


def test_outputs_and_markers(tiny_demo: tuple[list[str], Path]) -> None:
    _, run_dir = tiny_demo
    report = (run_dir / "report.html").read_text()
    assert len(report) > 10_000
    # The report opens with the paper-shaped table and every check, marked pass / fail.
    results = json.loads((run_dir / "results.json").read_text())
    claims = report[report.index('<section id="claims"') : report.index('<section id="summary"')]
    assert html.escape(results["table"]["title"]) in claims
    assert claims.count('<li class="pass">') == sum(c["passed"] for c in results["checks"])
    assert claims.count('<li class="fail">') == sum(not c["passed"] for c in results["checks"])
    assert all(html.escape(c["name"]) in claims for c in results["checks"])
    # `segdistill report` on the run directory writes the same verdict.
    assert main(["report", str(run_dir), "--out", str(run_dir / "again.html")]) == 0
    again = (run_dir / "again.html").read_text()
    assert claims in again
    assert "| model |" in (run_dir / "table.md").read_text()
    # Member 0 is the baseline: no separate baseline training.
    assert not (run_dir / "baseline").exists()
    steps = {p.stem for p in (run_dir / "stages").glob("*.json")}
    run_order = [
        "data",
        "teacher",
        "student-dudes",
        "student-holder",
        "evaluate",
        "ood-detectors",
        "bench",
    ]
    assert steps == {*run_order, "report"}
    assert (run_dir / "cache" / "dudes" / "cache.json").is_file()
    # Each step records its own peak resident memory; the report step's is in no results.
    markers = {p.stem: json.loads(p.read_text()) for p in (run_dir / "stages").glob("*.json")}
    assert set(results["stage_peak_rss_mib"]) == steps - {"report"}
    for step, peak in results["stage_peak_rss_mib"].items():
        assert peak == markers[step]["peak_rss_mib"] > 50  # a torch process is > 50 MiB
    # In the order they ran, and in the report with their time and peak.
    assert list(results["stages"]) == run_order
    assert f"<summary>Run: 7 steps, {sum(results['stages'].values()) / 60:.1f} min" in report
    peak = results["stage_peak_rss_mib"]["evaluate"] / 1024
    assert (
        f"<th>evaluate</th><td>{results['stages']['evaluate']:.1f}</td><td>{peak:.2f}</td>"
        in report
    )


def test_rerun_skips_every_step(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args, run_dir = tiny_demo
    before = (run_dir / "results.json").read_text()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == 7  # all but the data step, checked each run
    assert "already there (same SynthStreets parameters)" in out
    assert "checks:" in out and "mIoU" in out  # the summary is printed again
    assert (run_dir / "results.json").read_text() == before


def test_a_finished_network_of_another_config_is_not_skipped(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """As after editing a training config the experiment names: the finished student
    would be skipped and reported as the new recipe's."""
    args, run_dir = tiny_demo
    saved = run_dir / "students" / "dudes" / "config.yaml"
    text = saved.read_text()
    edited = yaml.safe_load(text)
    lr = edited["optim"]["lr"]
    edited["optim"]["lr"] = 2 * lr
    try:
        saved.write_text(yaml.safe_dump(edited, sort_keys=False))
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "step 'student-dudes' trained" in err and f"optim.lr: {2 * lr} -> {lr}" in err
        assert "stages/student-dudes.json" in err
    finally:
        saved.write_text(text)
    assert main(args) == 0


def test_a_copied_step_may_name_its_own_copy_of_a_file(tmp_path: Path) -> None:
    """A run directory started with another's steps names the same encoder weights at
    another path: the same bytes pass, other bytes are another recipe."""
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    old.write_bytes(b"weights")
    new.write_bytes(b"weights")
    network = tmp_path / "net"
    network.mkdir()
    saved = {"run.dir": str(network), "model.encoder_weights": str(old)}
    (network / "config.yaml").write_text(dump_config(replace_values(SegConfig(), saved, "t")))
    now = replace_values(SegConfig(), {**saved, "model.encoder_weights": str(new)}, "t")
    step = Step("teacher", "t", lambda: {}, (now,))
    check_finished_networks(step, tmp_path / "teacher.json")
    new.write_bytes(b"other weights")
    with pytest.raises(ConfigError, match=r"model.encoder_weights: '.*old.safetensors' ->"):
        check_finished_networks(step, tmp_path / "teacher.json")


def test_a_copied_run_directory_holds_the_same_experiment(
    tiny_demo: tuple[list[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cp -r RUN COPY`, then the same command with `--run-dir COPY`: every network is
    kept, an interrupted training resumes there, and the report names COPY's files. The
    students were trained naming RUN's teacher, teacher cache and baseline, which lie at
    the same places in COPY (it was refused: another config; and the resumed student:
    'cannot resume ... with another config')."""
    args, run_dir = tiny_demo
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "stages" / "student-dudes.json").unlink()  # as if stopped in its training
    assert (copy / "students" / "dudes" / "checkpoints" / "last.ckpt").is_file()
    moved = [*args]
    moved[moved.index("--run-dir") + 1] = str(copy)
    capsys.readouterr()
    assert main(moved) == 0
    printed = capsys.readouterr().out
    for step in ("teacher", "student-holder"):
        assert re.search(rf"\] {step}: .* - done before, skipped", printed), step
    assert re.search(r"\] student-dudes: .* \.\.\.\n", printed)
    assert "report: write results.json and report.html ... (again: run directory changed" in (
        printed
    )
    results = json.loads((copy / "results.json").read_text())
    networks = results["experiment"]["networks"].values()
    assert {Path(cfg["run"]["experiment_dir"]) for cfg in networks} == {copy}
    assert all(Path(cfg["run"]["dir"]).is_relative_to(copy) for cfg in networks)
    for model in results["models"]:
        assert (copy / model["ood_flag"]["file"]).is_file()
    assert str(run_dir) not in (copy / "ood_detectors.json").read_text()


def test_a_deleted_output_is_written_again(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished step whose output is gone runs again; before, its marker was trusted:
    report.json without results.json, or evaluation.json without evaluation/results.json,
    crashed the report with a FileNotFoundError traceback."""
    args, run_dir = tiny_demo
    (run_dir / "results.json").unlink()
    (run_dir / "evaluation" / "results.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "evaluate: evaluate every model ... (again: evaluation/results.json is missing)" in out
    assert "report: write results.json and report.html ... (again: results.json is missing)" in out
    # The evaluation wrote the same bytes again: the OOD flags, which read it, are kept.
    assert "ood-detectors: fit each model's OOD flag on the validation images - done" in out
    assert out.count("done before, skipped") == 5  # teacher, students, OOD flags, bench
    assert (run_dir / "results.json").is_file() and (
        run_dir / "evaluation" / "results.json"
    ).is_file()


def test_a_network_with_other_weights_is_evaluated_again_and_so_is_the_report(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The pipeline audit: a student trained again (its run directory or its marker
    deleted, as the error messages say to redo it) was not evaluated again: evaluate, the
    OOD flags, the benchmark and the report were skipped and results.json described the
    network that was deleted. Now each marker records what its step read."""
    args, run_dir = tiny_demo
    weights = run_dir / "students" / "dudes" / "checkpoints"
    (weights / "best.safetensors").unlink()  # so that the evaluation loads the new last
    _as_if_trained_again(weights / "last.safetensors")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    started = [line for line in out.splitlines() if line.startswith("[") and "(again: " in line]
    lines = {line.split(": ")[0].split("] ")[-1]: line for line in started}
    for step in ("evaluate", "ood-detectors", "bench"):  # the OOD flags read both
        assert "students/dudes/checkpoints/last.safetensors" in lines[step]
        assert lines[step].endswith("changed since it ran)")
    assert "report: write results.json and report.html ... (again: " in out
    assert out.count("done before, skipped") == 3  # the teacher and both students
    written = (weights / "last.safetensors").stat().st_mtime_ns
    for later in ("evaluation/results.json", "ood_detectors.json", "bench.json", "results.json"):
        assert (run_dir / later).stat().st_mtime_ns > written, later
    # The same bytes written again (a network trained again to the same weights, a
    # deleted file made again) change nothing.
    content = (weights / "last.safetensors").read_bytes()
    (weights / "last.safetensors").unlink()
    (weights / "last.safetensors").write_bytes(content)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 7


def _as_if_trained_again(weights: Path) -> None:
    """Rewrite a safetensors weights file with its first float tensor scaled by 1.5."""
    with safetensors.safe_open(weights, "pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    first = next(key for key, tensor in tensors.items() if tensor.is_floating_point())
    tensors[first] = tensors[first] * 1.5
    safetensors.torch.save_file(tensors, weights, metadata)


def test_other_best_weights_are_evaluated_again(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Evaluation reads a network's best.safetensors where it exists, but only
    last.safetensors was recorded as what it read: best weights replaced (or deleted, so
    that last is read) left the evaluation of the weights before in results.json."""
    args, run_dir = tiny_demo
    best = run_dir / "students" / "holder" / "checkpoints" / "best.safetensors"
    assert best.is_file()
    content = best.read_bytes()
    _as_if_trained_again(best)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    evaluate = next(line for line in out.splitlines() if "] evaluate: " in line)
    assert evaluate.endswith(
        "(again: students/holder/checkpoints/best.safetensors changed since it ran)"
    )
    best.write_bytes(content)  # the weights before: evaluated again, then nothing to do
    assert main(args) == 0
    assert "] evaluate: evaluate every model ... (again: " in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 7
    best.unlink()  # last is read now
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "students/holder/checkpoints/best.safetensors changed since it ran" in out


def test_a_deleted_student_and_data_folder_are_made_again(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting a student's run directory retrained it (its marker was trusted before, and
    the summary showed a model that no longer existed); a deleted data folder is
    generated again (the data step's marker was trusted, and the next step failed on the
    missing folder); a killed write's temporary file is removed."""
    args, run_dir = tiny_demo
    student = run_dir / "students" / "dudes"
    shutil.rmtree(student)
    leftover = run_dir / "evaluation" / "figures" / ".samples_test.png.123.0a1b2c3d.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    data_root = Path(yaml.safe_load((run_dir / "experiment.yaml").read_text())["data"]["root"])
    shutil.rmtree(data_root)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "student-dudes: distil the student 'dudes' (dudes; seed 0) ... (again: "
        "students/dudes/checkpoints/last.safetensors is missing)" in out
    )
    assert "student-holder: distil the student 'holder' (holder; seed 0) - done before" in out
    assert "ood-detectors: fit each model's OOD flag on the validation images ... (again: " in out
    assert not leftover.exists() and (data_root / "meta.json").is_file()
    assert (student / "ood_detector.json").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 7


def test_why_a_finished_step_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("{}")
    step = Step("s", "t", lambda: {}, outputs=(out,))
    marker = tmp_path / "stages" / "s.json"
    assert why_again(step, marker, {}, tmp_path) is None  # never finished
    marker.parent.mkdir()
    marker.write_text(json.dumps({"step": "s"}))  # written before inputs were recorded
    assert why_again(step, marker, {"a": "1"}, tmp_path) == ""
    marker.write_text(json.dumps({"step": "s", "inputs": {"a": "1", "b": "2"}}))
    assert why_again(step, marker, {"a": "1", "b": "2"}, tmp_path) == ""
    assert why_again(step, marker, {"a": "1", "b": "3"}, tmp_path) == "b changed since it ran"
    assert why_again(step, marker, {"a": "1"}, tmp_path) == "b changed since it ran"  # gone
    # A best.safetensors that a step read; a marker from before such optional outputs
    # were recorded is trusted as to them, one after is not.
    with_best = {"a": "1", "b": "2", "best": "9"}
    assert why_again(step, marker, with_best, tmp_path, ["best"]) == ""
    marker.write_text(json.dumps({"inputs": {"a": "1", "b": "2"}, "optional_inputs": ["best"]}))
    assert why_again(step, marker, with_best, tmp_path, ["best"]) == "best changed since it ran"
    assert why_again(step, marker, {"a": "1", "b": "2"}, tmp_path, ["best"]) == ""
    out.unlink()
    assert why_again(step, marker, {"a": "1", "b": "2"}, tmp_path) == "out.json is missing"
    every = Step("d", "t", lambda: {}, every_run=True)
    assert why_again(every, marker, {}, tmp_path) is None


def test_continues_after_an_interruption(
    tiny_demo: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Steps without a marker (as after Ctrl-C during the benchmark) run again; the rest
    are skipped."""
    args, run_dir = tiny_demo
    for step in ("bench", "report"):
        (run_dir / "stages" / f"{step}.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == 5
    assert "bench: done in" in out and "report: done in" in out


def test_seeds_train_baseline_and_students_again(tmp_path: Path, capsys) -> None:
    """`seeds: 2` (tiny demo, trained baseline): the baseline and both students train a
    second time with seed + 1 (Holder's from that seed's baseline, both reading the one
    teacher cache); everything is evaluated, only the first seed benchmarked; the table
    shows means and checks compare them. The second seed is added to a finished run of
    one seed in the same run directory: the first seed's networks are kept."""
    run_dir = tmp_path / "run"
    args = tiny_demo_args(tmp_path / "data", run_dir)
    args += ["baseline.member=null", "baseline.config=train_baseline.yaml"]
    # A sweep with every_seed trains each value per seed (it trained seed 0 only, and its
    # rows sat beside the table's means as if they were means too).
    args.append(
        "ablations=[{name: width, kind: sweep, student: dudes, every_seed: true,"
        " key: model.encoder_options.width, values: [0.125, 0.25]}]"
    )
    assert main([*args, "seeds=1"]) == 0
    first_seed = run_dir / "students" / "dudes" / "checkpoints" / "last.safetensors"
    trained = first_seed.read_bytes()
    capsys.readouterr()
    assert main([*args, "seeds=2"]) == 0
    printed = capsys.readouterr().out
    assert "seeds: 1 -> 2; the finished steps are kept (each network checked" in printed
    for step in ("baseline", "student-dudes", "student-holder", "ablation-width-0.25"):
        assert re.search(rf"\] {step}: .* - done before, skipped", printed), step
    assert first_seed.read_bytes() == trained
    assert "] evaluate: evaluate every model ... (again: " in printed
    results = json.loads((run_dir / "results.json").read_text())
    models = {m["name"]: m for m in results["models"]}
    seeded = {"baseline-s1", "dudes-s1", "holder-s1"}
    assert set(models) == {"ensemble", "baseline", "dudes", "holder", *seeded}
    assert {name: models[name]["seed_offset"] for name in seeded} == dict.fromkeys(seeded, 1)
    assert all(("speed" in m) == (m["name"] not in seeded) for m in models.values())
    networks = results["experiment"]["networks"]
    assert [networks[n]["seed"] for n in ("baseline", "baseline-s1", "dudes", "dudes-s1")] == [
        0, 1, 0, 1,
    ]  # fmt: skip
    assert networks["holder-s1"]["distill"]["init_from"] == str(run_dir / "baseline-s1")
    assert networks["dudes-s1"]["distill"]["teacher_cache"] == str(run_dir / "cache" / "dudes")
    steps = {p.stem for p in (run_dir / "stages").glob("*.json")}
    assert {"baseline", "baseline-s1", "student-dudes-s1", "student-holder-s1"} <= steps
    first, second = (load_segmenter(run_dir / "students" / n)[0] for n in ("dudes", "dudes-s1"))
    assert not all(
        torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items()
    )  # another seed, another network

    table = results["table"]
    assert [row[0] for row in table["rows"]] == ["ensemble", "baseline", "dudes", "holder"]
    miou = table["metrics"].index("miou") + 2
    row = next(r for r in table["rows"] if r[0] == "dudes")
    values = [models[n]["splits"]["test"]["segmentation"]["miou"] for n in ("dudes", "dudes-s1")]
    assert row[miou] == pytest.approx(np.mean(values))
    (check,) = [c for c in results["checks"] if c["name"].startswith("DUDES student mIoU")]
    assert len(check["per_seed"]) == 2

    width = results["ablations"]["width"]
    assert width["seeds"] == [0, 1] and len(width["rows"]) == 2
    # At the student's own width, seed by seed, the sweep's networks are the students.
    sweep = width["rows"][0]
    assert sweep["miou"] == pytest.approx(np.mean(values), abs=1e-12)
    assert sweep["std"]["miou"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert {"ablation-width-0.25", "ablation-width-0.25-s1"} <= steps
    assert (run_dir / "ablations" / "width" / "width=0.25-s1").is_dir()
    assert "ablation width (sweep, test, mean ± std of seeds [0, 1]):" in printed
    assert f"{sweep['miou']:.4f} ± {sweep['std']['miou']:.4f}" in printed

    # What only the report reads (a check's goal, the table's columns) may change there
    # too: it was refused with "delete RUN_DIR", though nothing needs to train again.
    name = results["checks"][0]["name"]
    assert main([*args, "seeds=2", "checks.0.min=-0.5", "table.columns=[miou, ece]"]) == 0
    printed = capsys.readouterr().out
    ran = re.findall(r"\] ([\w.-]+): .* \.\.\.", printed)
    assert ran == ["data", "report"], ran  # the data step runs every time
    again = json.loads((run_dir / "results.json").read_text())
    assert [c["min"] for c in again["checks"] if c["name"] == name][0] == -0.5
    assert again["table"]["metrics"] == ["miou", "ece"]
    assert again["models"] == results["models"]


def finish_a_step(run_dir: Path, step: str = "data") -> None:
    """The marker `run_pipeline` writes when a step has finished."""
    paths = RunPaths(run_dir)
    paths.stage(step).parent.mkdir(parents=True, exist_ok=True)
    paths.stage(step).write_text("{}")


def test_another_experiment_in_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    first = load_experiment(DEMO_CONFIG)
    claim_run_dir(first.spec, RunPaths(tmp_path))
    finish_a_step(tmp_path)
    claim_run_dir(first.spec, RunPaths(tmp_path))  # the same experiment: fine
    other = load_experiment(
        DEMO_CONFIG, ["teacher.members=3", "evaluate.max_images=7", "students.0.set.seed=4"]
    )
    with pytest.raises(ConfigError, match="another experiment") as error:
        claim_run_dir(other.spec, RunPaths(tmp_path))
    assert "teacher.members: 5 -> 3; students.0.set.seed: None -> 4" in str(error.value)
    assert "evaluate.max_images: 32 -> 7" in str(error.value)
    assert "'students': [" not in str(error.value)  # the item that changed, not the list
    assert "finished steps: data" in str(error.value)


def test_a_run_dir_where_only_the_data_step_finished_takes_another_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start that failed after the data step (e.g. a missing training config, fixed
    by another teacher setting) refused every corrected config: the data step runs on
    every run and its marker keeps nothing of the experiment."""
    first = load_experiment(DEMO_CONFIG)
    paths = RunPaths(tmp_path)
    claim_run_dir(first.spec, paths, plan(first, paths))
    finish_a_step(tmp_path, "data")
    other = load_experiment(DEMO_CONFIG, ["teacher.members=3"])
    claim_run_dir(other.spec, paths, plan(other, paths))
    assert "no step of the experiment recorded there had finished" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "experiment.yaml").read_text())["teacher"]["members"] == 3
    finish_a_step(tmp_path, "teacher")  # now a step with networks: refused
    with pytest.raises(ConfigError, match=r"another experiment .*finished steps: teacher\)"):
        claim_run_dir(first.spec, paths, plan(first, paths))


def test_only_the_seeds_may_change_in_a_run_dir_with_finished_steps(tmp_path: Path, capsys) -> None:
    """More seeds add networks beside the trained ones (each still checked against its
    config when its step is skipped); any other change beside them is refused."""
    trained = ["baseline.member=null", "baseline.config=train_baseline.yaml"]
    claim_run_dir(load_experiment(DEMO_CONFIG, trained).spec, RunPaths(tmp_path))
    finish_a_step(tmp_path)
    more = load_experiment(DEMO_CONFIG, [*trained, "seeds=3"]).spec
    claim_run_dir(more, RunPaths(tmp_path))
    assert "seeds: 1 -> 3; the finished steps are kept" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "experiment.yaml").read_text())["seeds"] == 3
    other = load_experiment(DEMO_CONFIG, [*trained, "seeds=4", "evaluate.max_images=7"])
    with pytest.raises(ConfigError, match="another experiment") as error:
        claim_run_dir(other.spec, RunPaths(tmp_path))
    assert "seeds: 3 -> 4; evaluate.max_images: 32 -> 7" in str(error.value)


def test_a_value_of_another_type_is_another_experiment(tmp_path: Path) -> None:
    """A sweep value 1 written 1.0 names other steps and folders (`width-1.0`): it was
    taken for the same experiment, trained the network again beside the first and left
    both steps in results.json."""
    nfs = REPO / "configs" / "quick" / "nfs.yaml"
    first = load_experiment(nfs, ["ablations.0.values=[0.25, 1]"])
    claim_run_dir(first.spec, RunPaths(tmp_path))
    finish_a_step(tmp_path)
    claim_run_dir(load_experiment(nfs, ["ablations.0.values=[0.25, 1]"]).spec, RunPaths(tmp_path))
    other = load_experiment(nfs, ["ablations.0.values=[0.25, 1.0]"])
    with pytest.raises(ConfigError, match="another experiment") as error:
        claim_run_dir(other.spec, RunPaths(tmp_path))
    assert "ablations.0.values.1: 1 -> 1.0" in str(error.value)  # the item, not the list


@pytest.mark.parametrize(
    ("values", "repeated"),
    [("[0.25, 0.5, 0.25]", "0.25 and 0.25"), ("[1, 0.5, 1.0]", "1 and 1.0")],
)
def test_a_sweep_value_given_twice_is_refused(tmp_path: Path, values: str, repeated: str) -> None:
    """The network trained twice (the second step "done before, skipped") and its row
    showed twice in the ablation table."""
    nfs = REPO / "configs" / "quick" / "nfs.yaml"
    experiment = load_experiment(nfs, [f"ablations.0.values={values}"])
    with pytest.raises(ConfigError, match=f"the values {repeated} both set") as error:
        plan(experiment, RunPaths(tmp_path))
    assert "ablation 'width'" in str(error.value) and str(nfs) in str(error.value)
    assert plan(load_experiment(nfs, ["ablations.0.values=[0.25, 0.5]"]), RunPaths(tmp_path))


def test_ablations_whose_steps_would_share_a_name_are_refused(tmp_path: Path) -> None:
    """The second of two ablations named alike was "done before, skipped": its rows never
    computed, the first's shown for both."""
    twice = "ablations=[{name: m, kind: sub_ensembles, sizes: [1, 2]}, " \
        "{name: m, kind: sub_ensembles, sizes: [3]}]"  # fmt: skip
    with pytest.raises(ConfigError, match=r"ablation names must be unique, got \['m', 'm'\]"):
        load_experiment(DEMO_CONFIG, [twice])
    # A sweep "w" of the value 0.125 and an ablation named "w-0.125": one step name.
    clash = (
        "ablations=[{name: w, kind: sweep, student: dudes, key: model.encoder_options.width,"
        " values: [0.125]}, {name: w-0.125, kind: sub_ensembles, sizes: [2]}]"
    )
    with pytest.raises(ConfigError, match=r"two steps would be named 'ablation-w-0.125'"):
        plan(load_experiment(DEMO_CONFIG, [clash]), RunPaths(tmp_path))


def test_a_string_sweep_value_the_schema_converts_is_compared_converted(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 (no dot) as a string; the training config reads it as 0.001.
    experiment = load_experiment(
        DEMO_CONFIG,
        [
            "ablations=[{name: lr, kind: sweep, student: dudes, key: optim.lr,"
            " values: [0.001, 1e-3]}]"
        ],
    )
    with pytest.raises(ConfigError, match="the values 0.001 and '1e-3' both set optim.lr=0.001"):
        plan(experiment, RunPaths(tmp_path))


def test_without_an_experiment_record_only_checked_steps_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With experiment.yaml deleted any config was taken as the finished steps' own: an
    evaluation with other settings was kept. Networks are checked against their own
    config.yaml, so their steps stay (experiments.md: a run directory started with a copy
    of another's teacher); evaluate, bench, report and the like run again."""
    experiment = load_experiment(DEMO_CONFIG)
    paths = RunPaths(tmp_path)
    for step in ("data", "teacher", "evaluate", "report"):
        paths.stage(step).parent.mkdir(parents=True, exist_ok=True)
        paths.stage(step).write_text("{}")
    claim_run_dir(experiment.spec, paths, plan(experiment, paths))
    assert "running again those that cannot be checked: evaluate, report" in capsys.readouterr().out
    assert {p.stem for p in (tmp_path / "stages").glob("*.json")} == {"data", "teacher"}
    assert (tmp_path / "experiment.yaml").is_file()


def test_a_finished_network_of_another_config_records_no_experiment(tmp_path: Path) -> None:
    """The refusal came after experiment.yaml was written, which then refused the config
    that had trained the network."""
    experiment = load_experiment(DEMO_CONFIG)
    paths = RunPaths(tmp_path)
    member = teacher_networks(experiment, paths)[0]
    other = replace_values(member, {"optim.lr": member.optim.lr * 2}, "t")
    member.run.path().mkdir(parents=True)
    (member.run.path() / "config.yaml").write_text(dump_config(other))
    finish_a_step(tmp_path, "teacher")
    with pytest.raises(ConfigError, match="step 'teacher' trained"):
        run_pipeline(experiment, tmp_path)
    assert not (tmp_path / "experiment.yaml").exists()


def test_a_changed_experiment_is_refused_whole_before_any_network_is_checked(
    tmp_path: Path,
) -> None:
    """The first error named one network's difference and said to delete it; deleting it
    led to the next network, and then to the experiment's own refusal: delete RUN_DIR."""
    experiment = load_experiment(DEMO_CONFIG)
    paths = RunPaths(tmp_path)
    member = teacher_networks(experiment, paths)[0]
    member.run.path().mkdir(parents=True)
    (member.run.path() / "config.yaml").write_text(dump_config(member))
    finish_a_step(tmp_path, "teacher")
    claim_run_dir(experiment.spec, paths)
    changed = load_experiment(DEMO_CONFIG, ["set.trainer.max_epochs=9", "bench.repeats=7"])
    with pytest.raises(ConfigError, match="holds the results of another experiment") as error:
        run_pipeline(changed, tmp_path)
    message = str(error.value)
    assert "bench.repeats: " in message and "-> 7" in message and "max_epochs" in message
    assert "step 'teacher' trained" not in message and "stages/ markers" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evaluate.splits=[test,snow]"], r"evaluate.splits: split 'snow' not found under"),
        (["table.columns=[miou,ood_auroc@snow]"], r"table.columns 'ood_auroc@snow': split"),
        (["checks.0.metric=miou@fog_0.3"], r"check .*: split 'fog_0.3' is not evaluated"),
        (["evaluate.splits=[test]", "table.columns=[miou@night]"], r"'night' is not evaluated"),
        (["table.split=val"], r"table.split: split 'val' is not evaluated \(evaluate.splits"),
        (
            ["ablations=[{name: m, kind: sub_ensembles, sizes: [2], split: vall}]"],
            r"ablation 'm': split 'vall' not found under .*; available: ",
        ),
    ],
)
def test_split_names_are_checked_in_the_data_step_before_anything_trains(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """A split name the data set lacks (a typo in evaluate.splits, a check's @split) was
    found after the teacher and students had trained, or not at all: a check on a split
    never evaluated printed FAIL with '-'. The corrected config was then refused there."""
    data = tmp_path / "data"
    demo = load_experiment(DEMO_CONFIG).spec.data.synth
    assert demo is not None
    config = SynthConfig(size=(32, 64), train=1, val=1, test=1, shifts=tuple(demo.shifts))
    generate(data, config, workers=1, progress=False)
    fine = load_experiment(DEMO_CONFIG, [f"data.root={data}"]).spec
    check_split_names(fine)  # the demo's own names: test and its shifted sets
    spec = load_experiment(DEMO_CONFIG, [f"data.root={data}", *overrides]).spec
    with pytest.raises(ConfigError, match=message):
        check_split_names(spec)


def test_unlabeled_images_may_lie_in_the_data_set_apart_from_its_evaluated_images(
    tmp_path: Path,
) -> None:
    """Cityscapes unpacks train_extra into leftImg8bit/ of the data set, where the
    experiment refused any unlabelled folder; a folder holding validated or evaluated
    images, or masks, is still refused, naming the split."""
    data = tmp_path / "data"
    config = SynthConfig(size=(32, 64), train=1, val=1, test=1, shifts=("rain",))
    generate(data, config, workers=1, progress=False)
    extra = data / "leftImg8bit" / "train_extra" / "town"
    extra.mkdir(parents=True)
    Image.new("RGB", (64, 32)).save(extra / "town_000000_000000_leftImg8bit.png")

    def spec(unlabeled: Path) -> Experiment:
        return load_experiment(
            DEMO_CONFIG, [f"data.root={data}", f"unlabeled={{root: {unlabeled}}}"]
        ).spec

    check_unlabeled_apart(spec(data / "leftImg8bit" / "train_extra"))
    for folder, what in (
        (data / "leftImg8bit", "images of the data set's 'test' split"),
        (data / "leftImg8bit" / "val", "images of the data set's 'val' split"),
        (data / "gtFine" / "train", "masks of the data set's 'train' split"),
        (data / "shifts" / "rain" / "leftImg8bit", "images of the data set's 'rain' split"),
    ):
        with pytest.raises(ConfigError, match=f"its images would include the {what}"):
            check_unlabeled_apart(spec(folder))


def test_a_missing_training_config_names_the_experiment_and_its_network(tmp_path: Path) -> None:
    """It said only 'config file configs/quick/distill_dudez.yaml does not exist'."""
    experiment = load_experiment(DEMO_CONFIG, ["students.0.config=distill_dudez.yaml"])
    with pytest.raises(ConfigError) as error:
        plan(experiment, RunPaths(tmp_path))
    assert str(error.value).startswith(
        f"{DEMO_CONFIG}: the student dudes names the training config 'distill_dudez.yaml', "
        f"but {DEMO_CONFIG.parent / 'distill_dudez.yaml'} does not exist"
    )


def test_a_second_run_into_a_run_directory_in_use_is_refused(tmp_path: Path) -> None:
    """Two runs into one directory trained every network twice into the same folders."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("pid 4242 on somewhere")
        lock.flush()
        with pytest.raises(ConfigError, match=r"in use by another run \(pid 4242 on somewhere"):
            run_pipeline(load_experiment(DEMO_CONFIG), run_dir)
    assert not (run_dir / "experiment.yaml").exists()


def test_each_step_needs_the_steps_whose_outputs_it_reads() -> None:
    """On the demo with a trained baseline, two seeds and a sweep."""
    overrides = ["baseline.member=null", "baseline.config=train_baseline.yaml", "seeds=2"]
    overrides.append(
        "ablations=[{name: w, kind: sweep, student: holder, key: model.encoder_options.width,"
        " values: [0.5]}]"
    )
    experiment = load_experiment(DEMO_CONFIG, overrides)
    steps = {step.name: step for step in plan(experiment, RunPaths(Path("r")))}
    needs = {name: step.needs for name, step in steps.items()}
    networks = ("teacher", "baseline", "student-dudes", "student-holder")
    seeded = ("baseline-s1", "student-dudes-s1", "student-holder-s1")
    assert needs["data"] == () and steps["data"].every_run
    assert needs["teacher"] == needs["baseline"] == needs["baseline-s1"] == ()
    assert needs["student-dudes-s1"] == ("teacher",)
    # Holder starts from its seed's baseline, as does the sweep's network.
    assert needs["student-holder"] == ("teacher", "baseline")
    assert needs["student-holder-s1"] == ("teacher", "baseline-s1")
    assert needs["ablation-w-0.5"] == ("teacher", "baseline")
    assert needs["ablation-w"] == ("ablation-w-0.5",)
    assert needs["evaluate"] == networks + seeded
    assert needs["ood-detectors"] == ("evaluate", *networks, *seeded)
    assert needs["bench"] == networks  # only the first seed is benchmarked
    assert needs["report"] == tuple(name for name in steps if name not in ("data", "report"))
    assert steps["student-dudes-s1"].outputs == (
        Path("r/students/dudes-s1/checkpoints/last.safetensors"),
    )


def test_a_run_that_stopped_before_its_first_step_finished_does_not_hold_the_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong data.root fails in the data step: the corrected command runs there."""

    def missing(spec: object) -> None:
        raise DataError(f"data folder {tmp_path / 'nothing'} does not exist")

    monkeypatch.setattr(pipeline_run, "prepare_all_data", missing)
    wrong = load_experiment(DEMO_CONFIG, [f"data.root={tmp_path / 'nothing'}"])
    with pytest.raises(DataError, match="nothing"):
        run_pipeline(wrong, tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()
    right = load_experiment(DEMO_CONFIG)
    claim_run_dir(right.spec, RunPaths(tmp_path / "run"))
    assert "no step of the experiment recorded there had finished" in capsys.readouterr().out
    recorded = yaml.safe_load((tmp_path / "run" / "experiment.yaml").read_text())
    assert recorded["data"]["root"] == right.spec.data.root
    # A config the plan refuses leaves no record at all.
    refused = load_experiment(DEMO_CONFIG, ["teacher.members=1"])
    with pytest.raises(ConfigError):
        run_pipeline(refused, tmp_path / "other")
    assert not (tmp_path / "other" / "experiment.yaml").exists()


def test_what_would_fail_after_the_teacher_is_refused_before_anything_runs(
    tmp_path: Path, capsys
) -> None:
    """At paper scale these failed at the baseline or the benchmark, after the ensemble had
    trained for days; several processes killed the run (Lightning runs the command again)."""
    run_dir = tmp_path / "run"

    def refused(overrides: list[str], message: str) -> None:
        with pytest.raises(ConfigError, match=message) as error:
            run_pipeline(load_experiment(DEMO_CONFIG, overrides), run_dir)
        assert str(error.value).startswith(str(DEMO_CONFIG))
        assert not run_dir.exists()  # nothing ran, nothing was claimed

    refused(["set.trainer.devices=2"], r"trainer.devices=2 x num_nodes=1: an experiment trains")
    weights = tmp_path / "resnet18-imagenet.pth"
    refused([f"set.model.encoder_weights={weights}"], r"model.encoder_weights: .*does not exist")
    torch.save(build_model(SegConfig().model, 19).encoder.state_dict(), weights)  # width 1
    refused(
        [f"set.model.encoder_weights={weights}"],
        r"do not fit ResNetEncoder: mis-shaped .* \(the file must be a resnet18 at "
        r"model.encoder_options \{'width': 0.25",
    )
    refused(["bench.device=cuda"], r"bench.device: device 'cuda': CUDA is not available")
    # Phrased as an experiment sets it (`--set trainer.accelerator=auto` is an unknown key).
    refused(
        ["set.trainer.accelerator=gpu"],
        r"set.trainer.accelerator='gpu': CUDA is not available .*; --set "
        r"set.trainer.accelerator=auto trains on what there is",
    )
    assert "steps into" not in capsys.readouterr().out


def test_a_teacher_without_spread_for_students_that_read_it_is_refused_before_training(
    tmp_path: Path,
) -> None:
    # The demo's DUDES and Holder students read the ensemble's spread; one member has none.
    experiment = load_experiment(DEMO_CONFIG, ["teacher.members=1"])
    with pytest.raises(ConfigError, match=r"student 'dudes' uses dudes, which read the teacher"):
        plan(experiment, RunPaths(tmp_path))


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_experiment_configs_load_and_plan(config: Path, tmp_path: Path) -> None:
    """Every experiment config of configs/ resolves all its training configs (paths,
    `extends`, overrides) and plans its steps."""
    experiment = load_experiment(config)
    steps = [step.name for step in plan(experiment, RunPaths(tmp_path))]
    pretrain = experiment.spec.pretrain
    first = ["data"]
    first += ["pretrain"] if pretrain else []
    first += ["pretrain-teacher"] if pretrain and pretrain.teacher else []
    first += ["teacher"]
    assert steps[: len(first)] == first and steps[-1] == "report"


def write_experiment(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    train = REPO / "configs" / "quick" / "train_baseline.yaml"
    path.write_text(f"teacher: {{config: {train}}}\nbaseline: {{config: {train}}}\n{text}")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("evaluat: {}\n", "unknown key 'evaluat'"),
        ("table: {columns: [mIoU]}\n", "unknown metric 'mIoU'"),
        ("checks: [{name: x, metric: miou, models: [nobody], min: 0}]\n", "unknown model"),
        ("checks: [{name: x, metric: miou, models: [baseline]}]\n", "give min, max or both"),
        (  # Python's list order: the first differing class decides, the others never count
            "checks: [{name: x, metric: per_class_iou, models: [teacher, baseline], "
            "compare: order}]\n",
            "compare=order orders numbers, not the classes of per_class_iou",
        ),
        (  # a bound on an order was never applied: it would read as checked
            "checks: [{name: x, metric: miou, models: [teacher, baseline], "
            "compare: order, min: 0.5}]\n",
            "compare=order takes no min .it checks",
        ),
        (
            "checks: [{name: x, metric: miou, models: [teacher], compare: order}]\n",
            "compare=order needs at least two models",
        ),
        (  # min_count counts classes: a scalar metric has none
            "checks: [{name: x, metric: miou, models: [baseline], min: 0.1, min_count: 3}]\n",
            "min_count counts classes within the bounds, and miou has one value",
        ),
        (
            "checks: [{name: x, metric: per_class_iou, models: [baseline], min: 0.1, "
            "min_count: 0}]\n",
            "min_count=0 must be >= 1",
        ),
        (
            "checks: [{name: x, metric: miou, models: [baseline], reference: teacher, min: 0}]\n",
            "compare=value checks each model's own value, so reference='teacher' would be",
        ),
        (
            "ablations: [{name: a, kind: sweep, student: nobody, key: k, values: [1]}]\n",
            "a sweep needs",
        ),
        (
            "pretrain: {config: train.yaml, data: {root: data/synthstreets}}\n",
            "another folder than data.root",
        ),
        (
            "pretrain: {config: train.yaml, data: {root: other}}\n"
            "students: [{name: s, config: distill.yaml}]\n"
            "ablations: [{name: a, kind: sweep, student: s, key: model.encoder_options.width,"
            " values: [1]}]\n",
            "no longer fits the pre-trained one",
        ),
        ("seeds: 0\n", "seeds=0 must be >= 1"),
        ("unlabeled: {root: extra}\n", "there are no students"),
        (
            "unlabeled: {root: data/synthstreets}\nstudents: [{name: s, config: d.yaml}]\n",
            "unlabeled.root='data/synthstreets' must be another folder than data.root",
        ),
        (  # generated inside the data set: two data sets in one tree
            "unlabeled: {root: data/synthstreets/extra, synth: {train: 1}}\n"
            "students: [{name: s, config: d.yaml}]\n",
            "neither inside the other",
        ),
        (  # the data set inside it, the same folder written another way
            "unlabeled: {root: ./data/../data}\nstudents: [{name: s, config: d.yaml}]\n",
            "unlabeled.root='./data/../data' must be another folder",
        ),
        (
            "pretrain: {config: train.yaml, data: {root: data/synthstreets/pre}}\n",
            "pretrain.data.root='data/synthstreets/pre' must be another folder",
        ),
        (
            "students: [{name: s-s1, config: d.yaml}, {name: s, config: d.yaml}]\nseeds: 2\n",
            "model names must be unique",
        ),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment(write_experiment(tmp_path, text))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["teacher.members=0"], "teacher.members=0 must be >= 1"),
        (["teacher.kind=mc_dropout", "teacher.samples=1"], "teacher.samples=1 must be >= 2"),
        (
            ["teacher.kind=mc_dropout", "teacher.members=10"],
            "teacher.members=10 is read by a teacher of kind 'ensemble' only; this teacher is "
            "kind='mc_dropout', which would ignore it",
        ),
        (
            ["teacher.kind=single", "teacher.samples=5"],
            "teacher.samples=5 is read by a teacher of kind 'mc_dropout' only; this teacher "
            "is kind='single'",
        ),
        (["teacher.samples=5"], "teacher.samples=5 is read by a teacher of kind 'mc_dropout'"),
        (["baseline.member=0"], "baseline needs exactly one of `config`"),
        (["baseline.config=null", "baseline.member=7"], "baseline.member=7 is not a member"),
        (
            ["baseline.config=null", "baseline.member=0", "seeds=2"],
            "seeds=2 trains the baseline once per seed",
        ),
        (
            [
                "baseline.config=null",
                "baseline.member=0",
                "pretrain={config: t.yaml, data: {root: other}}",
            ],
            "with `pretrain` the baseline must be trained",
        ),
        (
            ["teacher.kind=single", "ablations=[{name: m, kind: sub_ensembles, sizes: [1]}]"],
            "ablation 'm': sub_ensembles needs an ensemble teacher",
        ),
        (
            ["ablations=[{name: m, kind: sub_ensembles, sizes: [2, 6]}]"],
            r"ablation 'm': sizes=\[2, 6\] must be member counts 1..5",
        ),
        (
            ["checks=[{name: c, metric: miou, models: [baseline], compare: difference, min: 0}]"],
            "compare=difference needs a reference model",
        ),
        (["bench.size=[32]"], r"bench.size=\[32\] must be \[height, width\], two positive"),
        (["bench.size=[0,64]"], r"bench.size=\[0, 64\] must be"),
        (["bench.size=[32,64,3]"], r"bench.size=\[32, 64, 3\] must be"),
        (["bench.repeats=0"], "bench.repeats=0 must be >= 1"),
        (["bench.warmup=-1"], "bench.warmup=-1 must be >= 0"),
        (["evaluate.max_images=0"], "evaluate.max_images=0 must be >= 1"),
        (["evaluate.batch_size=0"], "evaluate.batch_size=0 must be >= 1"),
        (["teacher"], "--set teacher: expected KEY=VALUE"),
        (["teacher.members=[1,"], "--set teacher.members=\\[1,: the value is not valid YAML"),
        (["seeds.x=1"], "--set seeds.x=1: 'seeds' of .*exp.yaml is not a mapping or list"),
    ],
)
def test_experiment_rules_and_overrides_name_the_problem(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    path = write_experiment(tmp_path, "seeds: 1\n")
    with pytest.raises(ConfigError, match=message):
        load_experiment(path, overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "experiment config .*missing.yaml does not exist"),
        ("teacher: [1,\n", "exp.yaml: not valid YAML"),
        ("- 1\n", "exp.yaml: an experiment config must be a mapping, got \\[1\\]"),
    ],
)
def test_a_broken_experiment_file_is_named(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / ("missing.yaml" if text is None else "exp.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_overrides_index_lists(tmp_path: Path) -> None:
    """`students.0.set.seed=1`: a number indexes a list (a student, a check); a wrong
    index names the key."""
    path = write_experiment(tmp_path, "students: [{name: s, config: distill.yaml}]\n")
    experiment = load_experiment(path, ["students.0.set.seed=1", "students.0.label=S"])
    assert experiment.spec.students[0].set == {"seed": 1}
    assert experiment.spec.students[0].label == "S"
    with pytest.raises(ConfigError, match="'1' is not an index of a list of 1"):
        load_experiment(path, ["students.1.set.seed=1"])


def test_seeds_need_a_trained_baseline(tmp_path: Path) -> None:
    train = REPO / "configs" / "quick" / "train_baseline.yaml"
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"teacher: {{config: {train}, members: 2}}\nbaseline: {{member: 0}}\nseeds: 2\n"
    )
    with pytest.raises(ConfigError, match="seeds=2 trains the baseline once per seed"):
        load_experiment(path)


def test_pretrain_needs_a_trained_baseline(tmp_path: Path) -> None:
    train = REPO / "configs" / "quick" / "train_baseline.yaml"
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"teacher: {{config: {train}, members: 2}}\nbaseline: {{member: 0}}\n"
        f"pretrain: {{config: {train}, data: {{root: other}}}}\n"
    )
    with pytest.raises(ConfigError, match="baseline must be trained"):
        load_experiment(path)


def write_pretrain_experiment(tmp_path: Path, pretrain: str = "", teacher: str = "") -> Path:
    """A tiny experiment with a `pretrain` section on its own 4-image data set (seed 7),
    a 2-member teacher, a baseline and a DUDES student; `pretrain` and `teacher` are
    extra YAML entries of those sections (each ending with ", ")."""
    quick = REPO / "configs" / "quick"
    path = tmp_path / "exp.yaml"
    synth = "{size: [32, 64], train: 4, val: 2, test: 0, seed: 1}"
    path.write_text(
        f"data: {{root: {tmp_path / 'data'}}}\n"
        f"set: {{model.encoder_options.width: 0.125, data.crop_size: [32, 64], "
        f"data.batch_size: 2, data.num_workers: 0, trainer.max_epochs: 1, "
        f"trainer.limit_val_batches: 1, trainer.accelerator: cpu}}\n"
        f"pretrain: {{config: {quick / 'train_baseline.yaml'}, set: {{seed: 7}}, {pretrain}"
        f"data: {{root: {tmp_path / 'pretrain_data'}, synth: {synth}}}}}\n"
        f"teacher: {{config: {quick / 'train_baseline.yaml'}, {teacher}members: 2}}\n"
        f"baseline: {{config: {quick / 'train_baseline.yaml'}}}\n"
        f"students: [{{name: dudes, config: {quick / 'distill_dudes.yaml'}}}]\n"
    )
    return path


def test_pretrain_starts_the_baseline_and_students_from_its_encoder(tmp_path: Path) -> None:
    """The pretrain step trains on its own data and writes its encoder; the baseline and
    the students (not the teacher) load exactly that encoder and start their decoder fresh."""
    experiment = load_experiment(write_pretrain_experiment(tmp_path))
    paths = RunPaths(tmp_path / "run")
    steps = {step.name: step for step in plan(experiment, paths)}
    assert list(steps)[:3] == ["data", "pretrain", "teacher"]
    outputs = steps["pretrain"].run()
    assert outputs["data"]["generated"]
    assert (tmp_path / "pretrain_data" / "leftImg8bit" / "train").is_dir()
    pretrained, _ = load_segmenter(paths.pretrain)
    encoder = safetensors.torch.load_file(str(paths.pretrained_encoder))
    assert encoder.keys() == pretrained.encoder.state_dict().keys()
    assert all(torch.equal(v, pretrained.encoder.state_dict()[k]) for k, v in encoder.items())

    for cfg in (
        baseline_config(experiment, paths),
        student_config(experiment, paths, experiment.spec.students[0]),
    ):
        assert cfg.model.encoder_weights == str(paths.pretrained_encoder)
        network = build_model(cfg.model, cfg.data.num_classes)
        assert all(torch.equal(v, network.encoder.state_dict()[k]) for k, v in encoder.items())
        fresh, trained = network.decoder.state_dict(), pretrained.decoder.state_dict()
        assert not all(torch.equal(v, trained[k]) for k, v in fresh.items())
    assert teacher_config(experiment, paths).model.encoder_weights is None


def test_pretrain_teacher_starts_the_teacher_from_its_own_encoder(tmp_path: Path) -> None:
    """With `pretrain.teacher`, a second pre-training network of the teacher's model (here
    another encoder width and output stride than the students') trains with the pretrain
    recipe on the pretrain data; every member then loads its encoder, while the baseline and
    the students keep the students' encoder."""
    experiment = load_experiment(
        write_pretrain_experiment(
            tmp_path,
            pretrain="teacher: true, ",
            teacher="set: {model.encoder_options: {width: 0.25, output_stride: 8}}, ",
        )
    )
    paths = RunPaths(tmp_path / "run")
    steps = {step.name: step for step in plan(experiment, paths)}
    assert list(steps)[:4] == ["data", "pretrain", "pretrain-teacher", "teacher"]

    pretrain = pretrain_teacher_config(experiment, paths)
    assert pretrain.model.encoder_options == {"width": 0.25, "output_stride": 8}
    assert pretrain.model.encoder_weights is None
    assert pretrain.seed == 7 and pretrain.data.root == str(tmp_path / "pretrain_data")
    outputs = steps["pretrain-teacher"].run()
    assert outputs["encoder"] == str(paths.pretrained_teacher_encoder)
    pretrained, _ = load_segmenter(paths.pretrain_teacher)
    encoder = safetensors.torch.load_file(str(paths.pretrained_teacher_encoder))
    assert all(torch.equal(v, pretrained.encoder.state_dict()[k]) for k, v in encoder.items())

    teacher = teacher_config(experiment, paths)
    assert teacher.model.encoder_weights == str(paths.pretrained_teacher_encoder)
    member = build_model(teacher.model, teacher.data.num_classes)
    assert all(torch.equal(v, member.encoder.state_dict()[k]) for k, v in encoder.items())
    for cfg in (
        baseline_config(experiment, paths),
        student_config(experiment, paths, experiment.spec.students[0]),
    ):
        assert cfg.model.encoder_weights == str(paths.pretrained_encoder)
        assert cfg.model.encoder_options["width"] == 0.125


def test_unlabeled_images_are_generated_and_given_to_every_student(tmp_path: Path) -> None:
    """An `unlabeled` section with `synth`: the data step generates its train split only,
    and every student (not the baseline, not the teacher) reads those images as
    `distill.unlabeled_root`; a folder without images is refused, naming it."""
    path = write_pretrain_experiment(tmp_path)
    synth = "{size: [32, 64], train: 3, val: 5, test: 5, seed: 2}"
    path.write_text(
        path.read_text() + f"unlabeled: {{root: {tmp_path / 'extra'}, synth: {synth}}}\n"
    )
    experiment = load_experiment(path)
    paths = RunPaths(tmp_path / "run")
    (data_step,) = [step for step in plan(experiment, paths) if step.name == "data"]
    images = tmp_path / "extra" / "leftImg8bit" / "train"
    assert f"unlabeled images in {images}" in data_step.title
    assert experiment.spec.unlabeled is not None
    outputs = prepare_unlabeled(experiment.spec.unlabeled)
    assert outputs == {"images": str(images), "count": 3}
    assert not (tmp_path / "extra" / "leftImg8bit" / "val").exists()  # train split only
    student = student_config(experiment, paths, experiment.spec.students[0])
    assert student.distill is not None and student.distill.unlabeled_root == str(images)
    assert baseline_config(experiment, paths).distill is None
    assert teacher_config(experiment, paths).distill is None

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"unlabeled: {empty} holds no png or jpg image"):
        prepare_unlabeled(UnlabeledSpec(root=str(empty)))
    with pytest.raises(DataError, match=f"unlabeled: {tmp_path / 'absent'} is not a folder"):
        prepare_unlabeled(UnlabeledSpec(root=str(tmp_path / "absent")))


def test_students_share_a_cache_only_when_they_ask_it_for_the_same(tmp_path: Path) -> None:
    """configs/quick/nfs.yaml: its three students share cache/teacher; one student asking it
    for other signals would rebuild it for the next, so the plan refuses that."""
    nfs = REPO / "configs" / "quick" / "nfs.yaml"
    paths = RunPaths(tmp_path)
    experiment = load_experiment(nfs)
    plan(experiment, paths)
    for student in experiment.spec.students:
        distill = student_config(experiment, paths, student).distill
        assert distill is not None and distill.teacher_cache == str(tmp_path / "cache" / "teacher")
    with pytest.raises(
        ConfigError, match=r"students \['kd', 'ja_kd', 'ukd'\] share the teacher cache"
    ):
        plan(load_experiment(nfs, ["students.0.set.distill.cache_signals=[logits]"]), paths)


def test_a_run_started_before_a_new_schema_section_goes_on(tmp_path: Path) -> None:
    """experiment.yaml written before `unlabeled` and `bench.channels_last` existed lacks
    the keys: the same experiment, with the section unset and the switch off, may still
    resume in that directory; turned on, they make another experiment."""
    spec = load_experiment(DEMO_CONFIG).spec
    claim_run_dir(spec, RunPaths(tmp_path))
    finish_a_step(tmp_path)
    record = tmp_path / "experiment.yaml"
    old_text = record.read_text().replace("unlabeled: null\n", "")
    assert "  channels_last: false\n" in old_text
    record.write_text(old_text.replace("  channels_last: false\n", ""))
    claim_run_dir(spec, RunPaths(tmp_path))
    spec.bench.channels_last = True
    with pytest.raises(ConfigError, match="another experiment"):
        claim_run_dir(spec, RunPaths(tmp_path))
    spec.bench.channels_last = False
    spec.unlabeled = UnlabeledSpec(root="extra")
    with pytest.raises(ConfigError, match="another experiment"):
        claim_run_dir(spec, RunPaths(tmp_path))


def test_overrides_below_set_are_dotted_training_keys(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, "set: {trainer.max_epochs: 3}\n")
    experiment = load_experiment(path, ["set.model.encoder_options.width=0.5", "teacher.members=2"])
    assert experiment.spec.set == {"trainer.max_epochs": 3, "model.encoder_options.width": 0.5}
    assert experiment.spec.teacher.members == 2


def model(name: str, miou: float | None, unc: list[float | None], latency: float) -> dict:
    """A results.json model with the few numbers the checks read."""
    return {
        "name": name,
        "parameters": 1000,
        "splits": {
            "test": {
                "segmentation": {"miou": miou},
                "uncertainty": {
                    "per_class_mean": unc,
                    "miou_vs_removed": {"removed_fraction": [0.0, 0.5], "miou": [miou, 0.9]},
                },
            }
        },
        "speed": {"latency_ms": {"median": latency, "runs": [latency]}},
    }


# name -> its results.json entries, one per seed (one seed here).
MODELS = {
    "teacher": [model("teacher", 0.60, [0.10, 0.20, 0.30], 50.0)],
    "student": [model("student", 0.595, [0.11, 0.25, None], 10.1)],
    "baseline": [model("baseline", 0.60, [0.05, 0.05, 0.05], 10.0)],
}


@pytest.mark.parametrize(
    ("spec", "value", "passed"),
    [
        (dict(metric="miou", compare="difference", reference="baseline", min=-0.01), -0.005, True),
        (
            dict(metric="miou", compare="abs_difference", reference="teacher", max=0.001),
            0.005,
            False,
        ),
        (dict(metric="latency_ms", compare="ratio", reference="baseline", max=1.02), 1.01, True),
        (dict(metric="miou_gain_removed_50", min=0.3), 0.305, True),
        # Per class: |0.01|, |0.05|, None -> 1 class within 0.03.
        (
            dict(
                metric="per_class_mean_uncertainty",
                compare="abs_difference",
                reference="teacher",
                max=0.03,
                min_count=1,
            ),
            1,
            True,
        ),
    ],
)
def test_checks(spec: dict, value: float, passed: bool) -> None:
    (outcome,) = run_check(CheckSpec(name="claim", models=["student"], **spec), MODELS, "test")
    assert outcome["value"] == pytest.approx(value)
    assert outcome["passed"] is passed


def test_order_check_and_missing_values() -> None:
    order = CheckSpec(name="o", metric="miou", models=["teacher", "student"], compare="order")
    assert run_check(order, MODELS, "test")[0]["passed"] is True
    reverse = CheckSpec(name="o", metric="miou", models=["student", "teacher"], compare="order")
    assert run_check(reverse, MODELS, "test")[0]["passed"] is False
    absent = CheckSpec(name="n", metric="miou@night", models=["student"], min=0.0)
    assert run_check(absent, MODELS, "test")[0]["passed"] is False  # not evaluated: fails
    assert metric_value(MODELS["student"][0], "miou@night") is None


def test_strict_checks_are_not_met_by_a_tie() -> None:
    """A claim that a student beats its baseline (strict): a student equal to it to the
    last digit, as a distillation term of weight 0 trains with the same seed, fails; the
    inclusive bound passes it. MODELS' teacher and baseline both have mIoU 0.60."""
    tie = {"student": MODELS["teacher"], "baseline": MODELS["baseline"]}
    for strict, passed in ((False, True), (True, False)):
        beats = CheckSpec(
            name="beats", metric="miou", models=["student"], compare="difference",
            reference="baseline", min=0.0, strict=strict,
        )  # fmt: skip
        (outcome,) = run_check(beats, tie, "test")
        assert outcome["value"] == 0.0 and outcome["passed"] is passed
        assert outcome["strict"] is strict
        assert f"(goal {'>' if strict else '>='} 0.0)" in _check_line(outcome)
        order = CheckSpec(
            name="o", metric="miou", models=["teacher", "baseline"], compare="order",
            strict=strict,
        )  # fmt: skip
        assert run_check(order, MODELS, "test")[0]["passed"] is passed
    # Above the bound passes either way; a strict upper bound refuses its own value too.
    above = CheckSpec(name="a", metric="miou", models=["student"], min=0.59, strict=True)
    assert run_check(above, MODELS, "test")[0]["passed"] is True
    at_max = CheckSpec(name="m", metric="miou", models=["student"], max=0.595, strict=True)
    (outcome,) = run_check(at_max, MODELS, "test")
    assert outcome["passed"] is False and "(goal < 0.595)" in _check_line(outcome)
    # Per class, a class on the bound does not count (values exact in binary).
    per_class = CheckSpec(
        name="p", metric="per_class_mean_uncertainty", models=["student"],
        compare="abs_difference", reference="teacher", min_count=1, max=0.25, strict=True,
    )  # fmt: skip
    teacher = [model("teacher", 0.6, [0.5, 0.5, 0.5], 50.0)]
    student = [model("student", 0.6, [0.25, 0.75, 0.625], 10.0)]  # 0.25, 0.25, 0.125
    (outcome,) = run_check(per_class, {"student": student, "teacher": teacher}, "test")
    assert outcome["value"] == 1  # only 0.125 lies strictly under 0.25
    inclusive = dataclasses.replace(per_class, strict=False)
    assert run_check(inclusive, {"student": student, "teacher": teacher}, "test")[0]["value"] == 3


def test_checks_and_table_over_seeds() -> None:
    """With several seeds a check compares the means over the seeds (the teacher, trained
    once, against each) and lists the quantity per seed; the table holds the means and
    the sample standard deviations. Expected values computed here with numpy."""
    student_mious, baseline_mious = [0.50, 0.56, 0.53], [0.52, 0.55, 0.60]
    students = [
        model("student", m, [0.1, 0.2, u], 10.0) for m, u in zip(student_mious, [0.3, 0.4, None])
    ]
    baselines = [model("baseline", m, [0.0, 0.0, 0.0], 10.0) for m in baseline_mious]
    for seeded in students[1:] + baselines[1:]:
        del seeded["speed"]  # the bench times the first seed only
    teacher = model("teacher", 0.70, [0.1, 0.2, 0.33], 40.0)
    models = {"teacher": [teacher], "baseline": baselines, "student": students}

    difference = CheckSpec(
        name="d", metric="miou", models=["student"], compare="difference",
        reference="baseline", min=-0.01,
    )  # fmt: skip
    (outcome,) = run_check(difference, models, "test")
    expected = np.mean(student_mious) - np.mean(baseline_mious)
    assert outcome["value"] == pytest.approx(expected)  # -0.0267: fails on the mean
    assert outcome["passed"] is False
    per_seed = np.subtract(student_mious, baseline_mious)
    assert outcome["per_seed"] == pytest.approx(list(per_seed))
    assert "mean of 3 seeds" in _check_line(outcome)

    # Per class against the once-trained teacher: class means 0.1, 0.2, None (a seed
    # without a value leaves the class without one).
    per_class = CheckSpec(
        name="u", metric="per_class_mean_uncertainty", models=["student"],
        compare="abs_difference", reference="teacher", max=0.001, min_count=2,
    )  # fmt: skip
    (outcome,) = run_check(per_class, models, "test")
    assert (outcome["value"], outcome["defined"], outcome["passed"]) == (2, 2, True)
    assert "per_seed" not in outcome
    teacher_vs_student = CheckSpec(
        name="t", metric="miou", models=["student"], compare="abs_difference",
        reference="teacher", max=1.0,
    )  # fmt: skip
    (outcome,) = run_check(teacher_vs_student, models, "test")
    assert outcome["per_seed"] == pytest.approx([0.70 - m for m in student_mious])
    latency = CheckSpec(
        name="l", metric="latency_ms", models=["student"], compare="ratio",
        reference="baseline", max=1.02,
    )  # fmt: skip
    (outcome,) = run_check(latency, models, "test")
    assert outcome["value"] == pytest.approx(1.0) and "per_seed" not in outcome

    table = paper_table(TableSpec(columns=["miou", "latency_ms"]), models)
    means = {row[0]: row[2:] for row in table["rows"]}
    stds = dict(zip(means, table["std"]))
    assert means["student"][0] == pytest.approx(np.mean(student_mious))
    assert stds["student"][0] == pytest.approx(np.std(student_mious, ddof=1))
    assert means["student"][1] == 10.0 and stds["student"][1] is None  # first seed only
    assert stds["teacher"] == [None, None]
    assert table["seeds"] == {"teacher": 1, "baseline": 3, "student": 3}
    assert " ± " in _table_cells(table)[3][2] and " ± " not in _table_cells(table)[1][2]


@pytest.mark.slow
def test_full_size_demo(tmp_path: Path) -> None:
    """`segdistill demo` at its real size (minutes): the same schema, every step done."""
    args = ["demo", "--config", str(DEMO_CONFIG), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--set", f"data.root={tmp_path / 'data'}"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {m["name"] for m in results["models"]} == {"ensemble", "baseline", "dudes", "holder"}
    assert all(isinstance(c["passed"], bool) for c in results["checks"])


def test_latency_checks_pair_the_calls_of_a_repeat() -> None:
    """With the bench's timed calls in results.json, a latency ratio is the median of the
    per-repeat ratios (the calls of one repeat run back to back), not of the medians."""
    student = model("student", 0.6, [0.1], latency=10.1)
    baseline = model("baseline", 0.6, [0.1], latency=30.0)  # medians: 10.1 / 30
    student["speed"]["latency_ms"]["runs"] = [10.1, 10.1, 10.1, 30.3, 30.3]
    baseline["speed"]["latency_ms"]["runs"] = [80.0, 10.0, 10.0, 30.0, 30.0]
    spec = CheckSpec(
        name="head",
        models=["student"],
        metric="latency_ms",
        compare="ratio",
        reference="baseline",
        max=1.02,
    )
    (outcome,) = run_check(spec, {"student": [student], "baseline": [baseline]}, "test")
    assert outcome["value"] == pytest.approx(1.01) and outcome["passed"]
    # The line says what the ratio is: it differs from the ratio of the medians (10.1 / 30).
    line = _check_line(outcome, paired_calls=5)
    assert "ratio 1.0100, the median of 5 per-call ratios paired within the bench run" in line
    assert "not the ratio of the median latencies" in line
    # Five repeats give no 95 % interval: none is claimed.
    assert outcome["interval_95"] is None and not outcome["unresolved"]
    assert "interval" not in line


def test_a_latency_check_gives_the_interval_and_says_when_it_holds_the_goal() -> None:
    """A latency check carries the 95 % interval of its paired median (the 2nd and 9th of
    10 per-repeat ratios) and, where the goal lies inside it, says the run cannot decide."""
    student = model("student", 0.6, [0.1], latency=100.0)
    baseline = model("baseline", 0.6, [0.1], latency=100.0)
    student["speed"]["latency_ms"]["runs"] = [97, 99, 100, 101, 101.5, 102.5, 103, 104, 106, 110]
    baseline["speed"]["latency_ms"]["runs"] = [100.0] * 10
    spec = CheckSpec(
        name="head", models=["student"], metric="latency_ms", compare="ratio",
        reference="baseline", max=1.02,
    )  # fmt: skip
    (outcome,) = run_check(spec, {"student": [student], "baseline": [baseline]}, "test")
    assert outcome["value"] == pytest.approx(1.02) and outcome["passed"]
    assert outcome["interval_95"] == pytest.approx((0.99, 1.06)) and outcome["unresolved"]
    line = _check_line(outcome, paired_calls=10)
    assert "95 % interval 0.9900..1.0600 (unresolved: the goal lies inside it" in line
    # Ten milliseconds less on every call: the whole interval under the goal.
    student["speed"]["latency_ms"]["runs"] = [
        v - 10 for v in student["speed"]["latency_ms"]["runs"]
    ]
    (outcome,) = run_check(spec, {"student": [student], "baseline": [baseline]}, "test")
    assert outcome["interval_95"][1] < 1.02 and not outcome["unresolved"]
    assert "unresolved" not in _check_line(outcome, paired_calls=10)
    # A teacher / student check's lower bound inside the interval counts as well.
    low = CheckSpec(
        name="cost", models=["student"], metric="latency_ms", compare="ratio",
        reference="baseline", min=0.9,
    )  # fmt: skip
    (outcome,) = run_check(low, {"student": [student], "baseline": [baseline]}, "test")
    assert outcome["interval_95"][0] < 0.9 < outcome["interval_95"][1] and outcome["unresolved"]


def test_latency_is_explained_where_it_is_shown() -> None:
    """The printed summary, table.md and the report's claims say how the bench measured
    the table's latencies (one run, device, threads, size) and that a latency check's
    ratio is the median of the paired per-call ratios."""
    outcome = {
        "name": "head", "metric": "latency_ms", "compare": "ratio", "model": "student",
        "reference": "baseline", "min": None, "max": 1.02, "value": 0.97, "passed": True,
    }  # fmt: skip
    settings = {
        "size": [512, 1024], "batch": 1, "repeats": 5, "device": "cpu",
        "device_name": "AMD EPYC", "threads": 2, "torch": "2.13.0+cpu",
    }  # fmt: skip
    results = experiment_results(
        ["latency ms"], ["latency_ms"], [126.5], [None], [outcome], bench={"settings": settings}
    )
    table = results["table"]
    bench = (
        "Latency: median of 5 timed calls per model in one bench run, batch 1 x 3 x 512 x "
        "1024 on cpu (AMD EPYC), 2 threads, torch 2.13.0+cpu"
    )
    check = "ratio 0.9700, the median of 5 per-call ratios paired within the bench run"
    claims = experiment_claims(results)
    for text in (format_summary(results), format_markdown(results), " ".join(claims.notes)):
        assert bench in text
    for text in (format_summary(results), format_markdown(results), claims.checks[0][1]):
        assert check in text
    # Without a latency in the table or the checks, no bench line.
    quiet = {**results, "checks": [], "table": {**table, "metrics": ["miou"]}}
    assert "bench run" not in format_summary(quiet) and experiment_claims(quiet).notes == []


def test_the_paper_he_experiment_adapts_the_teachers_last_features(tmp_path: Path) -> None:
    """He et al.: the student has no ASPP and no decoder, the translator encodes the
    teacher's 256-channel ASPP output at stride 8, and the KD students share one teacher
    cache."""
    from segdistill.methods import Adaptation
    from segdistill.models import count_parameters

    experiment = load_experiment(REPO / "configs" / "paper" / "he.yaml")
    paths = RunPaths(tmp_path)
    students = {s.name: s for s in experiment.spec.students}
    adaptation = student_config(experiment, paths, students["adaptation"])
    assert adaptation.model.arch == "plain"
    (method,) = adaptation.distill.methods
    assert method.options["teacher_tap"] == "decoder_aspp"
    teacher_model = replace_values(
        teacher_config(experiment, paths), {"model.encoder_weights": None}, "test"
    ).model
    with torch.no_grad():
        features = build_model(teacher_model, 19).eval()(torch.zeros(1, 3, 64, 64)).features
    assert features["decoder_aspp"].shape[1:] == (256, 8, 8)  # stride 8
    adapter = Adaptation(1280, 256, **method.options)
    assert count_parameters(adapter, trainable_only=False) < 8e6  # 326 M on encoder_out
    assert {students[name].cache for name in ("kd_t2", "kd_t4", "kd_t6")} == {"teacher"}


def test_the_teacher_student_latency_goal_is_the_number_of_members() -> None:
    """`min: members` (every config's teacher / student latency check): `segdistill demo
    --members 3` checks >= 3, not the default 5; "{size}" in a check's name is bench.size."""
    sizes = ((5, "512x1024", []), (3, "64x128", ["teacher.members=3", "bench.size=[64,128]"]))
    for members, size, overrides in sizes:
        experiment = load_experiment(DEMO_CONFIG, overrides)
        assert experiment.spec.teacher.members == members
        (check,) = [c for c in experiment.spec.checks if c.models == ["ensemble"]]
        assert (check.metric, check.compare, check.min) == ("latency_ms", "ratio", members)
        # The size the benchmark ran at, not the default's "512x1024" written in the name.
        assert check.name == f"teacher / student latency >= N = {members} members at {size}"
    for config in (
        "quick/dudes.yaml",
        "quick/holder.yaml",
        "paper/dudes.yaml",
        "paper/holder.yaml",
    ):
        spec = load_experiment(REPO / "configs" / config).spec
        (check,) = [c for c in spec.checks if c.metric == "latency_ms" and c.min is not None]
        assert (
            check.min == spec.teacher.members and f">= {spec.teacher.members} members" in check.name
        )


def test_the_reference_config_of_experiments_md_loads_and_plans(tmp_path: Path) -> None:
    """The annotated config in docs/experiments.md is a working experiment (beside the
    quick training configs it names)."""
    text = (REPO / "docs" / "experiments.md").read_text()
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match is not None
    for config in (REPO / "configs" / "quick").glob("*.yaml"):
        shutil.copy(config, tmp_path)
    (tmp_path / "reference.yaml").write_text(match.group(1))
    experiment = load_experiment(tmp_path / "reference.yaml")
    steps = [step.name for step in plan(experiment, RunPaths(tmp_path / "run"))]
    assert "ablation-lr-0.05" in steps and steps[-1] == "report"


# ------------------------------------------ verdicts: bounds, compares, formatting
def experiment_results(
    columns: list[str],
    metrics: list[str],
    row: list[object],
    std: list[float | None],
    checks: Sequence[dict] = (),
    **extra: object,
) -> dict:
    """The least of an experiment's results.json that the summary, table.md and the
    report's claims read: a table of one student row, `checks`, and `extra` keys
    (`ablations`, `bench`) on top."""
    table = {
        "title": "t", "split": "test", "columns": ["model", "label", *columns],
        "metrics": metrics, "rows": [["student", "s", *row]], "std": [std],
    }  # fmt: skip
    return {
        "experiment": {"name": "e", "title": "e", "paper": ""}, "table": table,
        "models": [], "ablations": {}, "checks": list(checks), "stages": {}, **extra,
    }  # fmt: skip


def _value_check(**spec: object) -> dict:
    (outcome,) = run_check(CheckSpec(name="c", models=["student"], **spec), MODELS, "test")
    return outcome


def test_check_bounds_are_inclusive_and_nan_fails() -> None:
    """docs/experiments.md: the quantity must lie in [min, max], both inclusive; a NaN
    (an undefined metric) fails whatever the bounds."""
    miou = MODELS["student"][0]["splits"]["test"]["segmentation"]["miou"]  # 0.595
    assert _value_check(metric="miou", min=miou)["passed"] is True
    assert _value_check(metric="miou", max=miou)["passed"] is True
    assert _value_check(metric="miou", min=miou, max=miou)["passed"] is True
    assert _value_check(metric="miou", min=float(np.nextafter(miou, 1.0)))["passed"] is False
    nan = {"student": [model("student", float("nan"), [0.1], 10.0)]}
    for bounds in ({"min": 0.0}, {"max": 1.0}, {"min": 0.0, "max": 1.0}):
        spec = CheckSpec(name="n", metric="miou", models=["student"], **bounds)
        assert run_check(spec, nan, "test")[0]["passed"] is False


def test_a_ratio_of_a_metric_is_model_over_reference() -> None:
    """`ratio` on a metric other than latency: model / reference (0.595 / 0.60)."""
    outcome = _value_check(metric="miou", compare="ratio", reference="baseline", min=0.99)
    assert outcome["value"] == pytest.approx(0.595 / 0.60)
    assert outcome["passed"] is True  # 0.9917; the inverse, 1.0084, would pass too
    assert (
        _value_check(metric="miou", compare="ratio", reference="baseline", max=0.995)["passed"]
        is True
    )  # the inverse (1.0084) would fail


def test_order_allows_ties_and_fails_on_a_missing_value() -> None:
    """`order`: the values must not increase (a tie passes); a model without the metric
    fails the check (it does not crash the report)."""
    tie = CheckSpec(name="o", metric="miou", models=["teacher", "baseline"], compare="order")
    assert run_check(tie, MODELS, "test")[0]["passed"] is True  # 0.60, 0.60
    models = {**MODELS, "missing": [model("missing", None, [0.1], 10.0)]}
    for names in (["teacher", "missing"], ["missing", "teacher"]):
        spec = CheckSpec(name="o", metric="miou", models=names, compare="order")
        assert run_check(spec, models, "test")[0]["passed"] is False


def test_a_per_class_check_needs_every_class_by_default() -> None:
    """Without `min_count` every class must be within the bounds (CheckSpec: "default:
    all"), so a class without a value fails the default."""
    outcome = _value_check(
        metric="per_class_mean_uncertainty", compare="abs_difference", reference="teacher",
        max=0.06,
    )  # fmt: skip
    # |0.11 - 0.10|, |0.25 - 0.20| within 0.06; the third class has no value.
    assert (outcome["value"], outcome["of"], outcome["defined"]) == (2, 3, 2)
    assert outcome["min_count"] == 3 and outcome["passed"] is False


def test_one_seed_gives_no_per_seed_list() -> None:
    """docs/experiments.md: only with several seeds does a check list `per_seed`."""
    outcome = _value_check(metric="miou", compare="difference", reference="baseline", min=-1)
    assert "per_seed" not in outcome
    assert "seeds" not in _check_line(outcome)


def test_ood_auroc_reads_the_best_aggregator_and_none_without_one() -> None:
    entry = model("m", 0.5, [0.1], 10.0)
    by_aggregator = {"mean": {"auroc": 0.7}, "max": {"auroc": 0.9}}
    entry["ood"] = {"sets": {"fog": {"best_aggregator": "max", "by_aggregator": by_aggregator}}}
    assert metric_value(entry, "ood_auroc@fog") == 0.9
    entry["ood"]["sets"]["fog"]["best_aggregator"] = None  # no aggregator could be scored
    assert metric_value(entry, "ood_auroc@fog") is None
    spec = CheckSpec(name="o", metric="ood_auroc@fog", models=["m"], min=0.0)
    assert run_check(spec, {"m": [entry]}, "test")[0]["passed"] is False


def test_check_lines_give_the_verdict_the_goal_and_the_counts() -> None:
    passing = _value_check(metric="miou", compare="difference", reference="baseline", min=-0.01)
    failing = _value_check(metric="miou", max=0.5)
    assert _check_line(passing).startswith("PASS  c - student vs baseline: difference -0.0050")
    assert "(goal >= -0.01)" in _check_line(passing)
    assert _check_line(failing).startswith("FAIL  c - student: value 0.5950 (goal <= 0.5)")
    per_class = _value_check(
        metric="per_class_mean_uncertainty", compare="abs_difference", reference="teacher",
        max=0.03, min_count=1,
    )  # fmt: skip
    assert "1 of 3 classes <= 0.03 (need 1; 2 have a value)" in _check_line(per_class)
    results = experiment_results(
        ["mIoU", "latency ms"], ["miou", "latency_ms"], [0.595, 10.1], [None, None],
        [passing, failing],
    )  # fmt: skip
    table = results["table"]
    assert _table_cells(table)[1] == ["student", "s", "0.5950", "10.10"]
    summary = format_summary(results)
    assert "checks: 1 of 2 pass" in summary
    markdown = format_markdown(results)
    assert "- PASS  c - student vs baseline" in markdown and "- FAIL  c - student:" in markdown


@pytest.mark.parametrize(
    ("title", "caption"),
    [
        ("Table 2", "Table 2 (split test)"),
        ("Models (OOD AUROC per shifted set)", "Models (OOD AUROC per shifted set; split test)"),
        ("Table 1 on the SynthStreets test split", "Table 1 on the SynthStreets test split"),
        ("Table 1 on contest images", "Table 1 on contest images (split test)"),  # a word
        ("", "exp (split test)"),  # no title: the experiment's name
    ],
)
def test_the_table_caption_names_its_split_once(title: str, caption: str) -> None:
    """The demo's table read "... (OOD AUROC per shifted set) (split test)", and a title
    that says "test split" got "(split test)" after it."""
    results = experiment_results(["mIoU"], ["miou"], [0.5], [None], [])
    results["table"]["title"] = title
    results["experiment"]["name"] = "exp"
    assert results["table"]["split"] == "test"
    assert table_caption(results) == caption
    assert experiment_claims(results).title == caption
    assert f"\n{caption}\n" in format_markdown(results)
    assert format_summary(results).startswith(f"{caption}:\n")  # what the command prints


def test_speed_latency_ratios_pair_mine_over_the_others() -> None:
    """results.json speed.latency_vs_teacher / _vs_baseline: this model's calls over the
    other's, median of the per-repeat ratios."""
    runs = {"t": [50.0, 40.0, 90.0], "b": [10.0, 20.0, 10.0], "s": [11.0, 22.0, 30.0]}
    bench = {
        "models": [
            {"name": n, "passes": 1, "gflops_per_image": 1.0, "images_per_s": 1.0,
             "latency_ms": {"median": float(np.median(r)), "runs": r}}
            for n, r in runs.items()
        ]
    }  # fmt: skip
    speed = _speed({"name": "s"}, bench, {"t": "teacher", "b": "baseline", "s": "student"})
    s, t, b = (np.asarray(runs[n]) for n in "stb")
    assert speed["latency_vs_teacher"] == pytest.approx(np.median(s / t))  # 0.55, not 0.333
    assert speed["latency_vs_baseline"] == pytest.approx(np.median(s / b))  # 1.1


def test_the_ood_flag_table_shows_the_first_seed_only() -> None:
    flag = {"threshold": 0.5, "flagged": {"fog": 0.5}}
    models = [
        {"name": "m", "seed_offset": 0, "ood_flag": flag},
        {"name": "m-s1", "seed_offset": 1, "ood_flag": {**flag, "flagged": {"fog": 0.25}}},
    ]
    assert _ood_flag_cells({"models": models}) == [
        ["model", "threshold", "fog"],
        ["m", "0.5", "50%"],
    ]


def test_a_ratio_to_a_zero_reference_has_no_value_and_fails() -> None:
    """`ratio` against a reference of 0 is undefined: no quantity, and the check fails
    whatever its bounds (not 0, which a `max` passes, nor inf, which a `min` passes)."""
    models = {
        "student": [model("student", 0.5, [0.1], 10.0)],
        "baseline": [model("baseline", 0.0, [0.1], 10.0)],
    }
    for bounds in ({"max": 1.0}, {"min": 0.0}):
        spec = CheckSpec(
            name="r", metric="miou", models=["student"], compare="ratio",
            reference="baseline", **bounds,
        )  # fmt: skip
        (outcome,) = run_check(spec, models, "test")
        assert outcome["value"] is None and outcome["passed"] is False


def test_a_per_class_check_against_a_reference_without_values_fails() -> None:
    """A reference (or a seed) not evaluated there has no per-class list: the check
    crashed the report with "'NoneType' object is not iterable" instead of failing."""
    models = {
        "student": [model("student", 0.5, [0.3, 0.2], 10.0)],
        "baseline": [{"name": "baseline", "parameters": 1, "splits": {}}],
    }
    spec = CheckSpec(
        name="d", metric="per_class_mean_uncertainty", models=["student"],
        compare="difference", reference="baseline", min=0.0,
    )  # fmt: skip
    assert model_value(models["student"], spec.metric, "test") == [0.3, 0.2]
    (outcome,) = run_check(spec, models, "test")
    assert outcome["value"] is None and outcome["passed"] is False
    seeds = [model("student", 0.5, [0.3, 0.2], 10.0), {"name": "s", "splits": {}}]
    assert run_check(spec, {**models, "student": seeds}, "test")[0]["passed"] is False


def test_the_verdict_is_made_on_the_unrounded_quantity() -> None:
    """0.58996 - 0.60 = -0.01004 is shown as -0.0100 but fails `min: -0.01`: the summary
    rounds the number it prints, never the verdict."""
    models = {
        "student": [model("student", 0.58996, [0.1], 10.0)],
        "baseline": [model("baseline", 0.60, [0.1], 10.0)],
    }
    spec = CheckSpec(
        name="d", metric="miou", models=["student"], compare="difference",
        reference="baseline", min=-0.01,
    )  # fmt: skip
    (outcome,) = run_check(spec, models, "test")
    assert outcome["value"] == pytest.approx(-0.01004) and outcome["passed"] is False
    line = "FAIL  d - student vs baseline: difference -0.0100 (goal >= -0.01)"
    assert _check_line(outcome) == line
    results = experiment_results(["mIoU"], ["miou"], [0.58996], [None], [outcome])
    assert "checks: 0 of 1 pass" in format_summary(results)
    assert experiment_claims(results).checks == [(False, line)]


def test_the_report_gives_each_outcome_its_own_verdict_and_each_seed_its_value() -> None:
    """The HTML report's checks carry each outcome's `passed`, and a check over seeds
    lists the quantity of each seed in seed order (seed k of the model against seed k of
    the reference): 0.50 - 0.52 and 0.56 - 0.55, mean 0.53 - 0.535 = -0.005."""
    students = [model("student", m, [0.1], 10.0) for m in (0.50, 0.56)]
    baselines = [model("baseline", m, [0.1], 10.0) for m in (0.52, 0.55)]
    spec = CheckSpec(
        name="d", metric="miou", models=["student"], compare="difference",
        reference="baseline", min=-0.01,
    )  # fmt: skip
    (seeded,) = run_check(spec, {"student": students, "baseline": baselines}, "test")
    assert seeded["value"] == pytest.approx(-0.005) and seeded["passed"] is True
    assert _check_line(seeded).endswith("; mean of 2 seeds, each: -0.0200, 0.0100")
    failing = _value_check(metric="miou", max=0.5)
    results = experiment_results(["mIoU"], ["miou"], [0.53], [0.0424], [seeded, failing])
    checks = experiment_claims(results).checks
    assert [passed for passed, _ in checks] == [True, False]
    assert checks[0][1].startswith("PASS  d") and checks[1][1].startswith("FAIL  c")


def test_the_checks_are_made_on_the_tables_split(
    tiny_demo: tuple[list[str], Path], tmp_path: Path
) -> None:
    """write_results checks a metric without @split on `table.split` (fog_0.02 here), as
    docs/experiments.md says, not on the test split."""
    args, run_dir = tiny_demo
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = args[args.index("--set") + 1 :] + [
        "teacher.members=2",
        "table.split=fog_0.02",
        "checks=[{name: u, metric: class_mean_uncertainty, models: [dudes], min: 0.0}]",
    ]
    experiment = load_experiment(DEMO_CONFIG, overrides)
    paths = RunPaths(copy)
    write_results(experiment, paths, [step.name for step in plan(experiment, paths)])
    results = json.loads((copy / "results.json").read_text())
    (dudes,) = [m for m in results["models"] if m["name"] == "dudes"]
    fog, test = (dudes["splits"][s]["uncertainty"]["class_mean"] for s in ("fog_0.02", "test"))
    assert fog != test
    (outcome,) = results["checks"]
    assert outcome["value"] == pytest.approx(fog)


def test_an_ablation_row_gives_each_column_its_own_std() -> None:
    """A sweep over seeds shows each column's mean ± that column's sample std (rows.json
    `std`), none on the swept value, which has no std."""
    rows = [{"value": 0.5, "miou": 0.4, "ece": 0.1, "std": {"miou": 0.02, "ece": 0.005}}]
    ablation = {"kind": "sweep", "split": "test", "seeds": [0, 1], "rows": rows}
    results = experiment_results(["mIoU"], ["miou"], [0.5], [None], ablations={"width": ablation})
    summary = format_summary(results)
    assert "ablation width (sweep, test, mean ± std of seeds [0, 1]):" in summary
    (line,) = [line for line in summary.splitlines() if line.startswith("0.5")]
    assert line.split() == ["0.5000", "0.4000", "±", "0.0200", "0.1000", "±", "0.0050"]


# A pipeline whose expensive steps are stubs (fast): each writes the files the real one
# leaves, and every call is recorded, so that what runs again and with which config can
# be checked without training.
TRAINED_BASELINE = ["baseline.member=null", "baseline.config=train_baseline.yaml"]


class StubbedPipeline:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.trained: dict[str, SegConfig] = {}  # run.dir: config of each training
        self.calls: list[str] = []
        self.weights = b""  # appended to what every training writes: other weights
        self.during: dict[str, Callable[[], object]] = {}  # run.dir: callable run while it trains
        for name in (
            "prepare_all_data",
            "pretrain_encoder",
            "train_teacher",
            "train_network",
            "evaluate_models",
            "fit_ood_detectors",
            "bench_models",
            "sub_ensembles",
            "sweep",
            "write_results",
        ):
            monkeypatch.setattr(pipeline_run, name, getattr(self, name))
        monkeypatch.setattr(pipeline_run, "format_summary", lambda results: "")

    def run(self, *overrides: str) -> list[str]:
        """The steps that ran (not skipped) of a run with the demo config + overrides."""
        self.calls.clear()
        run_pipeline(load_experiment(DEMO_CONFIG, list(overrides)), self.run_dir)
        return self.calls

    def prepare_all_data(self, spec: object) -> dict:
        return {}

    def train_network(self, cfg: SegConfig) -> dict:
        run_dir = cfg.run.path()
        self.calls.append(str(run_dir.relative_to(self.run_dir)))
        self.trained[str(run_dir)] = cfg
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        (run_dir / "checkpoints" / "last.safetensors").write_bytes(
            dump_config(cfg).encode() + self.weights
        )
        if str(run_dir) in self.during:
            self.during[str(run_dir)]()
        return {"run_dir": str(run_dir)}

    def pretrain_encoder(self, data: object, cfg: SegConfig) -> dict:
        self.train_network(cfg)
        encoder = cfg.run.path() / "encoder.safetensors"
        encoder.write_bytes(b"encoder" + self.weights)
        return {"encoder": str(encoder)}

    def train_teacher(self, exp: LoadedExperiment, paths: RunPaths) -> dict:
        for cfg in teacher_networks(exp, paths):
            self.train_network(cfg)
        (paths.teacher / "manifest.json").write_text("{}")
        return {}

    def _write(self, step: str, path: Path, content: object = None) -> dict:
        self.calls.append(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
        return {}

    def evaluate_models(self, exp: LoadedExperiment, paths: RunPaths) -> dict:
        return self._write("evaluate", paths.evaluation / "results.json")

    def fit_ood_detectors(self, exp: LoadedExperiment, paths: RunPaths) -> dict:
        for _, home in pipeline_run.model_sources(exp, paths, exp.spec.seeds):
            (home / DETECTOR_FILE).write_text("{}")
        return self._write("ood-detectors", paths.ood_detectors)

    def bench_models(self, exp: LoadedExperiment, paths: RunPaths) -> dict:
        return self._write("bench", paths.bench)

    def sub_ensembles(self, exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict:
        return self._write(f"rows {ablation.name}", paths.ablation(ablation.name) / "rows.json")

    def sweep(self, exp: LoadedExperiment, paths: RunPaths, ablation: AblationSpec) -> dict:
        return self._write(f"rows {ablation.name}", paths.ablation(ablation.name) / "rows.json")

    def write_results(self, exp: LoadedExperiment, paths: RunPaths, order: list[str]) -> dict:
        for name in ("table.md", "report.html"):
            (paths.root / name).write_text(exp.spec.table.title)
        return self._write("report", paths.root / "results.json", {"stages": order})


@pytest.fixture
def stubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StubbedPipeline:
    return StubbedPipeline(monkeypatch, tmp_path / "run")


def test_stubbed_run_skips_what_finished_and_reruns_what_read_a_change(
    stubbed: StubbedPipeline,
) -> None:
    overrides = [*TRAINED_BASELINE, "ablations=[{name: m, kind: sub_ensembles, sizes: [1, 2]}]"]
    ran = stubbed.run(*overrides)
    members = [f"teacher/member_0{i}" for i in range(5)]
    networks = ["baseline", "students/dudes", "students/holder"]
    after = ["evaluate", "ood-detectors", "bench", "rows m", "report"]
    assert ran == [*members, *networks, *after]
    assert stubbed.run(*overrides) == []  # everything finished, nothing changed
    # A killed write's temporary file is removed by the next run.
    leftover = stubbed.run_dir / "evaluation" / ".results.json.123.0a1b2c3d.tmp"
    leftover.write_text("half")
    assert stubbed.run(*overrides) == [] and not leftover.exists()
    # The teacher trained again: the students distil from it, the sub-ensembles are its.
    (stubbed.run_dir / "stages" / "teacher.json").unlink()
    stubbed.weights = b"teacher"
    assert stubbed.run(*overrides) == [*members, "students/dudes", "students/holder", *after]
    stubbed.weights = b""
    # A model's OOD flag deleted: the step that writes it runs again, and only that one
    # (it writes the same bytes, which the report read).
    (stubbed.run_dir / "students" / "holder" / DETECTOR_FILE).unlink()
    assert stubbed.run(*overrides) == ["ood-detectors"]
    # The baseline trained again to other weights: Holder starts from it, DUDES does not.
    (stubbed.run_dir / "stages" / "baseline.json").unlink()
    stubbed.weights = b"other"
    assert stubbed.run(*overrides) == ["baseline", "students/holder", *after[:3], "report"]
    assert stubbed.run(*overrides) == []


def test_stubbed_a_step_that_fails_leaves_no_marker_and_runs_again(
    stubbed: StubbedPipeline,
) -> None:
    """A training killed after an epoch has left its weights file: its step is not
    finished, and the next run trains it again (resuming) instead of skipping it."""
    student = stubbed.run_dir / "students" / "dudes"

    def killed() -> None:
        raise KeyboardInterrupt

    stubbed.during[str(student)] = killed
    with pytest.raises(KeyboardInterrupt):
        stubbed.run(*TRAINED_BASELINE)
    assert (student / "checkpoints" / "last.safetensors").is_file()
    assert not (stubbed.run_dir / "stages" / "student-dudes.json").exists()
    assert (stubbed.run_dir / "stages" / "baseline.json").is_file()
    del stubbed.during[str(student)]
    ran = stubbed.run(*TRAINED_BASELINE)
    assert ran == ["students/dudes", "students/holder", "evaluate", "ood-detectors", "bench"] + [
        "report"
    ]
    # A step that ends without its output (a finished training whose weights file was
    # deleted) is refused, and not marked finished.
    (stubbed.run_dir / "stages" / "student-dudes.json").unlink()
    stubbed.during[str(student)] = lambda: (student / "checkpoints" / "last.safetensors").unlink()
    with pytest.raises(ConfigError, match="step 'student-dudes' ended without"):
        stubbed.run(*TRAINED_BASELINE)
    assert not (stubbed.run_dir / "stages" / "student-dudes.json").exists()


def test_stubbed_the_run_directory_is_held_while_every_step_runs(
    stubbed: StubbedPipeline,
) -> None:
    """The lock was checked when the run started; it must be held until the last step."""
    held = []

    def second_run() -> None:
        held.append(folder_user(stubbed.run_dir))
        with pytest.raises(ConfigError, match="in use by another run"):
            run_pipeline(load_experiment(DEMO_CONFIG, TRAINED_BASELINE), stubbed.run_dir)

    stubbed.during[str(stubbed.run_dir / "students" / "holder")] = second_run
    stubbed.run(*TRAINED_BASELINE)
    assert held and held[0] is not None and held[0].startswith("pid ")
    assert folder_user(stubbed.run_dir) is None  # released at the end


def test_stubbed_seed_copies_train_with_their_seed_their_baseline_and_folder(
    stubbed: StubbedPipeline,
) -> None:
    """seeds: 3 with configs of seed 5: the k-th copy of every network has seed 5 + k, its
    own folder, the one teacher and teacher cache, and (Holder, and a sweep of Holder with
    every_seed) starts from the baseline of its own seed."""
    overrides = [
        *TRAINED_BASELINE,
        "seeds=3",
        "baseline.set.seed=5",
        "students.0.set.seed=5",
        "students.1.set.seed=5",
        "ablations=[{name: lr, kind: sweep, student: holder, key: optim.lr, values: [0.02],"
        " every_seed: true}]",
    ]
    stubbed.run(*overrides)
    run = stubbed.run_dir
    trained = {str(Path(d).relative_to(run)): cfg for d, cfg in stubbed.trained.items()}
    assert sorted(trained) == sorted(
        [f"teacher/member_0{i}" for i in range(5)]
        + ["baseline", "baseline-s1", "baseline-s2"]
        + [f"students/{s}{k}" for s in ("dudes", "holder") for k in ("", "-s1", "-s2")]
        + ["ablations/lr/lr=0.02", "ablations/lr/lr=0.02-s1", "ablations/lr/lr=0.02-s2"]
    )
    for k, suffix in enumerate(("", "-s1", "-s2")):
        baseline = trained[f"baseline{suffix}"]
        assert baseline.seed == 5 + k and baseline.distill is None
        for folder in ("students/dudes", "students/holder", "ablations/lr/lr=0.02"):
            name = f"{folder}{suffix}"
            cfg = trained[name]
            assert cfg.seed == 5 + k, name
            assert cfg.distill is not None
            assert cfg.distill.teacher.path == str(run / "teacher")
            starts = None if "dudes" in name else str(run / f"baseline{suffix}")
            assert cfg.distill.init_from == starts, name
        assert trained[f"ablations/lr/lr=0.02{suffix}"].optim.lr == 0.02
    assert {trained[f"students/dudes{s}"].distill.teacher_cache for s in ("", "-s1", "-s2")} == {
        str(run / "cache" / "dudes")
    }
    # Each seed's baseline trained again: only the networks that start from it follow.
    (run / "stages" / "baseline-s1.json").unlink()
    stubbed.weights = b"other"
    ran = stubbed.run(*overrides)
    assert ran == ["baseline-s1", "students/holder-s1", "evaluate", "ood-detectors"] + [
        "ablations/lr/lr=0.02-s1",
        "rows lr",
        "report",
    ]  # the benchmark times the first seed only
    # Every model is evaluated from its own folder, named after its seed.
    sources = pipeline_run.model_sources(load_experiment(DEMO_CONFIG, overrides), RunPaths(run), 3)
    assert [(name, str(path.relative_to(run))) for name, path in sources] == [
        ("ensemble", "teacher"),
        *[
            (f"{n}{s}", f"{d}{n}{s}")
            for s in ("", "-s1", "-s2")
            for d, n in (("", "baseline"), ("students/", "dudes"), ("students/", "holder"))
        ],
    ]


def test_stubbed_what_only_the_report_reads_runs_the_report_alone(
    stubbed: StubbedPipeline,
) -> None:
    stubbed.run(*TRAINED_BASELINE)
    for change in ("checks.0.min=-0.5", "table.columns=[miou, ece]", "title=Another"):
        assert stubbed.run(*TRAINED_BASELINE, change) == ["report"], change
    # A second seed trains beside the first; the benchmark times the first seed only.
    ran = stubbed.run(*TRAINED_BASELINE, "title=Another", "seeds=2")
    networks = ["baseline-s1", "students/dudes-s1", "students/holder-s1"]
    assert ran == [*networks, "evaluate", "ood-detectors", "report"]
    assert stubbed.run(*TRAINED_BASELINE, "title=Another", "seeds=2") == []


ENCODER = "encoder.safetensors"
PRETRAIN = "pretrain={config: train_baseline.yaml, data: {root: other}, teacher: true}"


def test_stubbed_a_new_pretrained_encoder_trains_again_the_networks_that_load_it(
    stubbed: StubbedPipeline,
) -> None:
    """The students' encoder is loaded by the baseline and the students, the teacher's by
    the teacher: each trains again when the encoder it starts from has other bytes."""
    sweep = "ablations=[{name: lr, kind: sweep, student: dudes, key: optim.lr, values: [0.02]}]"
    ran = stubbed.run(*TRAINED_BASELINE, PRETRAIN, sweep)
    assert ran[:2] == ["pretrain", "pretrain-teacher"]
    assert all(
        cfg.model.encoder_weights == str(stubbed.run_dir / "pretrain-teacher" / ENCODER)
        for d, cfg in stubbed.trained.items()
        if "member_" in d
    )
    for name in ("baseline", "students/dudes", "students/holder", "ablations/lr/lr=0.02"):
        cfg = stubbed.trained[str(stubbed.run_dir / name)]
        assert cfg.model.encoder_weights == str(stubbed.run_dir / "pretrain" / ENCODER)
    evaluated = ["evaluate", "ood-detectors", "bench"]
    stubbed.weights = b"other"
    (stubbed.run_dir / "stages" / "pretrain.json").unlink()
    networks = ["baseline", "students/dudes", "students/holder"]
    ran = stubbed.run(*TRAINED_BASELINE, PRETRAIN, sweep)
    assert ran == ["pretrain", *networks, *evaluated, "ablations/lr/lr=0.02", "rows lr", "report"]
    (stubbed.run_dir / "stages" / "pretrain-teacher.json").unlink()
    stubbed.weights = b"again"
    members = [f"teacher/member_0{i}" for i in range(5)]
    # The teacher's outputs change: every student distils from another teacher.
    ran = stubbed.run(*TRAINED_BASELINE, PRETRAIN, sweep)
    students = ["students/dudes", "students/holder"]
    sweep_network = ["ablations/lr/lr=0.02", "rows lr"]
    assert ran == ["pretrain-teacher", *members, *students, *evaluated, *sweep_network, "report"]


def test_stubbed_a_copy_of_a_run_dir_runs_its_report_again(
    stubbed: StubbedPipeline, tmp_path: Path
) -> None:
    """results.json names the run directory's files: in a copy it is written again, and
    nothing else runs (each network there names the original's places)."""
    stubbed.run(*TRAINED_BASELINE)
    copy = tmp_path / "copy"
    shutil.copytree(stubbed.run_dir, copy)
    stubbed.run_dir = copy
    assert stubbed.run(*TRAINED_BASELINE) == ["report"]
    assert stubbed.run(*TRAINED_BASELINE) == []


@pytest.mark.parametrize(
    ("network", "step", "overrides"),
    [
        ("baseline", "baseline", []),
        ("baseline-s1", "baseline-s1", ["seeds=2"]),
        ("teacher/member_03", "teacher", []),
        ("students/holder-s1", "student-holder-s1", ["seeds=2"]),
        ("pretrain", "pretrain", [PRETRAIN]),
        ("pretrain-teacher", "pretrain-teacher", [PRETRAIN]),
        (
            "ablations/lr/lr=0.02",
            "ablation-lr-0.02",
            ["ablations=[{name: lr, kind: sweep, student: holder, key: optim.lr, values: [0.02]}]"],
        ),
    ],
)
def test_stubbed_every_finished_network_is_compared_with_its_config(
    stubbed: StubbedPipeline, network: str, step: str, overrides: list[str]
) -> None:
    """As after a training config the experiment names was edited: each network's step,
    finished, would be skipped and its network reported as the new recipe's."""
    stubbed.run(*TRAINED_BASELINE, *overrides)
    saved = stubbed.run_dir / network / "config.yaml"
    edited = yaml.safe_load(saved.read_text())
    edited["optim"]["weight_decay"] = 0.123
    saved.write_text(yaml.safe_dump(edited, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"step '{step}' trained .*weight_decay: 0.123 ->"):
        stubbed.run(*TRAINED_BASELINE, *overrides)


@pytest.mark.parametrize(
    "change",
    [
        "students=[{name: dudes, label: DUDES, config: distill_dudes.yaml}, {name: holder, label:"
        " Holder & Shafique, config: distill_holder.yaml, init_from_baseline: true, set: "
        "{distill.cache_scale: 0.5, trainer.max_epochs: 1}}, {name: kd, config: distill_kd.yaml}]",
        "ablations=[{name: m, kind: sub_ensembles, sizes: [2]}]",  # one more
        "evaluate.splits=[test]",
        "data.synth.seed=3",
    ],
)
def test_a_list_that_grew_or_shrank_is_another_experiment(tmp_path: Path, change: str) -> None:
    """A student or an ablation added beside finished steps, another evaluation: only the
    seeds and what the report reads may change in a run directory."""
    claim_run_dir(load_experiment(DEMO_CONFIG).spec, RunPaths(tmp_path))
    finish_a_step(tmp_path)
    with pytest.raises(ConfigError, match="another experiment"):
        claim_run_dir(load_experiment(DEMO_CONFIG, [change]).spec, RunPaths(tmp_path))


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_network_step_resumes_an_interrupted_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: bool
) -> None:
    """Only a run directory with a resume checkpoint resumes (a new one starts fresh)."""
    calls = []
    monkeypatch.setattr(pipeline_networks, "train", lambda cfg, resume: calls.append(resume))
    cfg = replace_values(SegConfig(), {"run.dir": str(tmp_path / "net")}, "t")
    if interrupted:
        (tmp_path / "net" / RESUME_CHECKPOINT).parent.mkdir(parents=True)
        (tmp_path / "net" / RESUME_CHECKPOINT).write_bytes(b"state")
    assert pipeline_networks.train_network(cfg) == {"run_dir": str(tmp_path / "net")}
    assert calls == [interrupted]


def test_a_network_whose_encoder_width_differs_from_the_pretrained_one_is_refused(
    tmp_path: Path,
) -> None:
    pretrain = "pretrain={config: train_baseline.yaml, data: {root: other}, set: "
    fits = load_experiment(DEMO_CONFIG, [*TRAINED_BASELINE, pretrain + "{}}"])
    plan(fits, RunPaths(tmp_path))
    wider = load_experiment(
        DEMO_CONFIG, [*TRAINED_BASELINE, pretrain + "{model.encoder_options.width: 0.5}}"]
    )
    with pytest.raises(ConfigError, match="'baseline' has encoder resnet18 at width .* 0.5"):
        plan(wider, RunPaths(tmp_path))


@pytest.mark.parametrize(
    "overrides",
    [
        ["students.0.set.distill.cache_scale=0.5"],  # other sizes of the same signals
        ["students.2.cache=ukd", "students.0.set.distill.cache_signals=[logits]"],  # two
    ],
)
def test_students_sharing_a_cache_ask_it_for_the_same_scale_and_signals(
    tmp_path: Path, overrides: list[str]
) -> None:
    nfs = REPO / "configs" / "quick" / "nfs.yaml"
    with pytest.raises(ConfigError, match=r"students \['kd', 'ja_kd'.*share the teacher cache"):
        plan(load_experiment(nfs, overrides), RunPaths(tmp_path))


def test_a_single_teacher_has_no_spread_either(tmp_path: Path) -> None:
    experiment = load_experiment(DEMO_CONFIG, [*TRAINED_BASELINE, "teacher.kind=single"])
    with pytest.raises(ConfigError, match=r"student 'dudes' uses dudes.*\(single, one forward"):
        plan(experiment, RunPaths(tmp_path))


def test_an_mc_dropout_teacher_runs_its_samples_for_the_students_and_the_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/quick/nfs.yaml with teacher.samples=3 (not the default): each student
    distils from, and the evaluation runs, the teacher with that many passes."""
    experiment = load_experiment(REPO / "configs" / "quick" / "nfs.yaml", ["teacher.samples=3"])
    paths = RunPaths(tmp_path)
    for student in experiment.spec.students:
        distill = student_config(experiment, paths, student).distill
        assert distill is not None
        assert (distill.teacher.kind, distill.teacher.samples) == ("mc_dropout", 3)
    loaded = []

    class Loaded:
        name = ""

    def load(source: Path, mc_samples: int | None = None) -> Loaded:
        loaded.append((source.name, mc_samples))
        return Loaded()

    monkeypatch.setattr(pipeline_evaluation, "load_predictor", load)
    pipeline_evaluation.load_models(experiment, paths)
    assert loaded[0] == ("teacher", 3) and all(samples == 3 for _, samples in loaded)


def test_min_members_is_the_default_member_count_when_the_teacher_gives_none(
    tmp_path: Path,
) -> None:
    path = write_experiment(
        tmp_path,
        "checks: [{name: 'latency over {members} members', metric: latency_ms,"
        " models: [teacher], compare: ratio, reference: baseline, min: members}]\n",
    )
    (check,) = load_experiment(path).spec.checks
    assert (check.min, check.name) == (5, "latency over 5 members")
    (check,) = load_experiment(path, ["teacher.members=2"]).spec.checks
    assert (check.min, check.name) == (2, "latency over 2 members")
