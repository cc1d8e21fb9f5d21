"""segdistill report: a self-contained page that renders in headless Chromium, every image
loaded, and every data-metric cell equal to the number in metrics.json as displayed."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from segdistill.checkpoints import save_weights
from segdistill.cli import main
from segdistill.config import ModelConfig
from segdistill.data.synthstreets import SynthConfig, generate
from segdistill.defaults import RESULTS_FILE
from segdistill.errors import SegdistillError
from segdistill.evaluate import METRICS_FILE, evaluate
from segdistill.models import build_segmenter
from segdistill.report import (
    DIGITS,
    Claims,
    ReportModel,
    build_report,
    load_models,
    ood_set_table,
    ood_summary_table,
    per_class_table,
    summary_table,
    write_report,
)

TINY = {"width": 0.125}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ensemble of two and a DUDES student evaluated on a tiny tree (test, night,
    anomaly); returns the folder holding the run directories and out/results.json."""
    root = tmp_path_factory.mktemp("report")
    config = SynthConfig(size=(32, 64), train=0, val=0, test=2, shifts=("night", "anomaly"))
    generate(root / "data", config, workers=1, progress=False)
    for run, head in (("ens/member_0", None), ("ens/member_1", None), ("dudes", "scalar")):
        model = build_segmenter(
            "deeplabv3plus", "resnet18", 19, uncertainty_head=head, encoder_options=TINY
        )
        config = ModelConfig(encoder_options=TINY, uncertainty_head=head)
        save_weights(root / run / "checkpoints" / "best.safetensors", model, config)
    manifest = {"members": [{"checkpoint": f"member_{i}"} for i in range(2)]}
    (root / "ens" / "manifest.json").write_text(json.dumps(manifest))
    evaluate(
        [root / "ens", root / "dudes"],
        root / "data",
        batch_size=2,
        out_dir=root / "out",
        num_samples=1,
        progress=False,
    )
    return root


def expected_value(model: dict[str, Any], key: str) -> Any:
    """The metrics.json value a data-metric key names (the report's key scheme, resolved
    here independently of the report code)."""
    parts = key.split("/")
    if parts == ["members"] or parts == ["parameters"]:
        return model[parts[0]]
    if parts[0] == "pixel_anomaly":
        return model["anomaly"][parts[1]]
    if parts[0] == "ood":
        name, aggregator, metric = parts[1:]
        result = model["ood"]["sets"][name]
        if aggregator == "best":
            aggregator = result["best_aggregator"]
        return result["by_aggregator"][aggregator][metric]
    if parts[0] == "vs_teacher":
        return model["vs_teacher"]["splits"][parts[1]]["paired"][parts[2]]
    split, metric = parts[0], parts[1]
    result = model["splits"][split]
    classes = model["class_names"]
    if len(parts) == 3:
        cls = parts[2]
        if metric == "iou":
            return (
                result["segmentation"]["miou"]
                if cls == "mean"
                else result["segmentation"]["iou"][classes.index(cls)]
            )
        if metric == "uncertainty":
            unc = result["uncertainty"]
            return unc["class_mean"] if cls == "mean" else unc["per_class_mean"][classes.index(cls)]
        diffs = model["vs_teacher"]["splits"][split]
        if metric == "iou_diff":
            return diffs["miou"] if cls == "mean" else diffs["iou"][classes.index(cls)]
        if cls == "mean":
            return diffs["class_mean_uncertainty"]
        return diffs["per_class_mean_uncertainty"][classes.index(cls)]
    paths = {
        "miou": ("segmentation", "miou"),
        "pixel_accuracy": ("segmentation", "pixel_accuracy"),
        "mean_class_accuracy": ("segmentation", "mean_class_accuracy"),
        "ece": ("calibration", "ece"),
        "misclassification_auroc": ("uncertainty", "misclassification", "auroc"),
        "misclassification_aupr": ("uncertainty", "misclassification", "aupr"),
        "misclassification_fpr95": ("uncertainty", "misclassification", "fpr95"),
        "aurc": ("uncertainty", "aurc"),
        "eaurc": ("uncertainty", "eaurc"),
        "pavpu_max": ("uncertainty", "pavpu", "max"),
        "pixel_mean_uncertainty": ("uncertainty", "pixel_mean"),
    }
    value: Any = result
    for step in paths[metric]:
        value = value[step]
    return value


def check_cell(text: str, value: Any, key: str) -> None:
    if value is None:
        assert text == "n/a", key
    elif isinstance(value, int):
        assert int(text.replace(",", "")) == value, key
    else:
        assert float(text) == pytest.approx(round(value, DIGITS), abs=0.6 * 10**-DIGITS), key


def browser():
    """Headless Chromium, or a failure (a skip with SEGDISTILL_SKIP_BROWSER=1) saying why."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = (
            f"{CHROMIUM} and {CHROMEDRIVER} are needed to render the report: install the "
            "Debian packages chromium and chromium-driver (make test does), or set "
            "SEGDISTILL_SKIP_BROWSER=1 to skip this test"
        )
        if os.environ.get("SEGDISTILL_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    return webdriver, Service


def test_report_renders_in_chromium(evaluated: Path, tmp_path: Path) -> None:
    webdriver, service = browser()
    report = write_report([evaluated / "out"], tmp_path / "report.html", title="tiny report")
    page = report.read_text()
    # Self-contained: no external resource of any kind.
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "<script" not in page

    options = webdriver.ChromeOptions()
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.as_uri())
        assert driver.title == "tiny report"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert len(images) >= 10
        assert all(complete and width > 0 for _, complete, width in images), images
        assert any(alt.startswith("dudes: test") for alt, _, _ in images)  # sample figure
        cells = driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-metric]'))"
            ".map(c => [c.dataset.metric, c.textContent])"
        )
    finally:
        driver.quit()

    models = {
        m["name"]: m for m in json.loads((evaluated / "out" / RESULTS_FILE).read_text())["models"]
    }
    assert len(cells) > 100
    seen = set()
    for key, text in cells:
        name, rest = key.split("/", 1)
        check_cell(text, expected_value(models[name], rest), key)
        seen.add(rest.split("/")[0])
    assert {"test", "night", "anomaly", "ood", "vs_teacher", "members"} <= seen
    keys = dict(cells)
    assert {"dudes/test/iou/road", "dudes/test/uncertainty_diff/road", "ens/test/miou"} <= set(keys)
    assert "ens/test/uncertainty_diff/road" not in keys  # the teacher has no teacher
    # A metric shown twice (summary and detail tables) reads the same in both.
    assert all(keys[key] == text for key, text in cells)


def test_report_from_run_directories(evaluated: Path, tmp_path: Path, capsys) -> None:
    """Run directories give the same models as the results file; the CLI writes the page."""
    from_runs = load_models([evaluated / "ens", evaluated / "dudes" / METRICS_FILE])
    from_results = load_models([evaluated / "out" / RESULTS_FILE, evaluated / "ens"])
    assert [m.name for m in from_runs] == ["ens", "dudes"]
    assert [m.name for m in from_results] == ["ens", "dudes"]  # the repeated ensemble once
    assert from_runs[1].metrics["splits"] == from_results[1].metrics["splits"]
    code = main(
        [
            "report",
            str(evaluated / "ens"),
            str(evaluated / "dudes"),
            "--out",
            str(tmp_path / "r.html"),
            "--title",
            "Runs <1> & 2",
        ]
    )
    assert code == 0 and "wrote" in capsys.readouterr().out
    page = (tmp_path / "r.html").read_text()
    assert 'data-metric="dudes/test/miou"' in page and "data:image/png;base64," in page
    assert "<title>Runs &lt;1&gt; &amp; 2</title>" in page


def test_the_report_refuses_to_write_over_its_own_input(
    evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out RUN/metrics.json` replaced the evaluation with the HTML page (and the next
    report said "not a JSON file"): the evaluation was lost."""
    run = shutil.copytree(evaluated / "dudes", tmp_path / "dudes")
    metrics = run / METRICS_FILE
    before = metrics.read_bytes()
    for given in (run, metrics):
        assert main(["report", str(given), "--out", str(metrics)]) == 2
        assert f"--out {metrics} is {metrics}, an input of the report" in capsys.readouterr().err
    assert metrics.read_bytes() == before
    assert main(["report", str(run), "--out", str(run / "report.html")]) == 0


def test_only_a_single_experiment_results_file_opens_the_page_with_its_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment's table and checks head the page of its results.json alone, not of
    a comparison that names it among other inputs, nor of an evaluation's results.json."""
    from segdistill.commands import report as report_command
    from segdistill.evaluate import SCHEMA_EXPERIMENT
    from segdistill.pipeline import results

    monkeypatch.setattr(results, "experiment_claims", lambda content: content["schema"])
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({"schema": SCHEMA_EXPERIMENT}))
    assert report_command._claims([str(path)]) == SCHEMA_EXPERIMENT
    assert report_command._claims([str(tmp_path)]) == SCHEMA_EXPERIMENT  # its folder
    assert report_command._claims([str(path), str(path)]) is None
    path.write_text(json.dumps({"schema": "segdistill.results/1", "models": []}))
    assert report_command._claims([str(path)]) is None


def test_run_without_metrics(tmp_path: Path, capsys) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SegdistillError, match=r"run has no metrics.json .*segdistill evaluate"):
        load_models([tmp_path / "run"])
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 2
    assert "segdistill evaluate" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SegdistillError, match="not written by `segdistill evaluate`"):
        load_models([tmp_path / "other.json"])
    # A network of an experiment points at the experiment's results.json.
    student = tmp_path / "exp" / "students" / "dudes"
    student.mkdir(parents=True)
    (tmp_path / "exp" / "results.json").write_text("{}")
    with pytest.raises(SegdistillError, match=f"part of the experiment in {tmp_path / 'exp'}"):
        load_models([student])
    with pytest.raises(SegdistillError, match=r"missing\.json does not exist"):
        load_models([tmp_path / "missing.json"])
    (tmp_path / "broken.json").write_text('{"models": [')
    with pytest.raises(SegdistillError, match=r"broken\.json is not a JSON file"):
        load_models([tmp_path / "broken.json"])
    with pytest.raises(SegdistillError, match="no models to report"):
        write_report([], tmp_path / "empty.html")


def test_two_models_of_one_name_from_different_files_both_stay(
    evaluated: Path, tmp_path: Path
) -> None:
    # The same run read twice is one model; another run of the same name (its metrics
    # name another weights file) is a second one.
    shutil.copytree(evaluated / "dudes", tmp_path / "dudes")
    metrics_path = tmp_path / "dudes" / METRICS_FILE
    metrics = json.loads(metrics_path.read_text())
    metrics["source"] = str(tmp_path / "dudes" / "checkpoints" / "best.safetensors")
    metrics_path.write_text(json.dumps(metrics))
    models = load_models([evaluated / "dudes", evaluated / "dudes", tmp_path / "dudes"])
    assert [m.name for m in models] == ["dudes", "dudes_2"]
    assert models[0].metrics["splits"] == models[1].metrics["splits"]


# ------------------------------------------------------------ tables, without a browser


def fake_model(name: str, iou: list[float], unc: list[float], ece: float, source: str) -> dict:
    """A results.json model with the numbers the summary and per-class tables read."""
    return {
        "name": name,
        "kind": "student",
        "members": 1,
        "parameters": 10,
        "uncertainty_source": source,
        "class_names": ["road", "car", "wall"],
        "splits": {
            "test": {
                "segmentation": {"iou": iou, "miou": sum(iou) / len(iou)},
                "calibration": {"ece": ece},
                "uncertainty": {"per_class_mean": unc, "class_mean": sum(unc) / len(unc)},
            }
        },
        "anomaly": None,
        "vs_teacher": None,
    }


def bold_keys(page: str) -> set[str]:
    """The data-metric keys of the bold (best) cells of an HTML table."""
    return set(re.findall(r'<td class="num best" data-metric="([^"]+)"', page))


# road: a best, car: b best, wall: a tie of both (no best).
MODELS = [
    fake_model("a", [0.9, 0.2, 0.0], [0.1, 0.2, 0.3], 0.05, "ensemble pred_std"),
    fake_model("b", [0.8, 0.5, 0.0], [0.4, 0.1, 0.2], 0.02, "1 - max softmax"),
]


def test_per_class_bold_marks_the_best_model_of_each_class() -> None:
    page = per_class_table(MODELS, "test", "iou", "high", "IoU per class")
    # Per class (row), not per model (column): a's road and b's car; the mean row (a
    # 0.367, b 0.433) b's; the all-zero wall row nothing.
    assert bold_keys(page) == {"a/test/iou/road", "b/test/iou/car", "b/test/iou/mean"}
    assert "<caption>IoU per class (higher is better)</caption>" in page
    # Mean uncertainty has no better direction (and the measures differ): no bold; each
    # model's column names its measure.
    page = per_class_table(MODELS, "test", "uncertainty", None, "Mean uncertainty")
    assert bold_keys(page) == set()
    assert "<th>a (ensemble pred_std)</th><th>b (1 - max softmax)</th>" in page


def test_summary_headers_say_which_way_is_better() -> None:
    page = summary_table(MODELS, "test")
    assert "<th>mIoU ↑</th>" in page and "<th>ECE ↓</th>" in page
    assert "<th>mean unc.</th>" in page  # no direction
    # Per metric (column), the best model: b has the higher mIoU and the lower ECE.
    assert {"b/test/miou", "b/test/ece"} <= bold_keys(page)
    assert not {"a/test/miou", "a/test/ece"} & bold_keys(page)
    assert not any(key.endswith("pixel_mean_uncertainty") for key in bold_keys(page))


def test_the_ood_table_names_a_model_that_scores_another_map() -> None:
    night = {"best_aggregator": "mean", "by_aggregator": {"mean": {"auroc": 0.9}}}
    ood = {"reference": "test", "sets": {"night": night}}
    ensemble = {**MODELS[0], "ood": ood}  # written before ood_source: its uncertainty
    holder = {
        **MODELS[1],
        "name": "holder",
        "uncertainty_source": "student head (per-class, predicted class)",
        "ood_source": "mean over the classes",
        "ood": ood,
    }
    page = ood_summary_table([ensemble, holder])
    assert page is not None
    assert "holder scores its mean over the classes, the others their uncertainty" in page
    plain = ood_summary_table([ensemble, {**MODELS[1], "ood_source": "1 - max softmax"}])
    assert plain is not None and "scores its" not in plain


def test_report_explains_its_abbreviations_and_the_experiment_table(evaluated: Path) -> None:
    models = load_models([evaluated / "out"])
    dudes = models[1]
    seeded = ReportModel(
        {**dudes.metrics, "name": "dudes-s1", "seed_offset": 1}, dudes.base, dudes.origin
    )
    claims = Claims(
        title="table",
        header=["model", "mIoU", "latency ms"],
        rows=[["a", "0.6000", "10.00"], ["b", "0.5000 ± 0.0100", "11.00"]],
        checks=[(True, "PASS  a claim")],
        notes=["Latency: how the bench measured it."],
    )
    page = build_report([*models, seeded], claims=claims)
    glossary = page[page.index('id="glossary"') :]
    for term in ("ECE", "FPR95", "AURC, E-AURC", "pAvPU", "mean unc., class-mean unc.", "misc."):
        assert f"<li><b>{term}</b>: " in glossary
    assert page.count('id="glossary"') == 1
    claims_part = page[page.index('<section id="claims"') : page.index('<section id="summary"')]
    assert '<p class="note">Latency: how the bench measured it.</p>' in claims_part
    # Which model measures uncertainty how, and what "±" is (the seeds: offsets 0 and 1).
    assert "ensemble pred_std: ens; student head (scalar): dudes, dudes-s1" in claims_part
    assert "± sample standard deviation (n - 1) over the 2 seeds" in claims_part


def test_the_ood_tables_name_each_sets_clean_split() -> None:
    """Foggy Cityscapes read on a labelled test and Rain Cityscapes on val (it has no test):
    each set's captions name its own clean split; an old file has only the shared one."""
    result = {"best_aggregator": "mean", "by_aggregator": {"mean": {"auroc": 0.9}}}
    ood = {
        "reference": "test",
        "aggregators": ["mean"],
        "sets": {
            "fog_0.02": {**result, "reference": "test"},
            "rain": {**result, "reference": "val"},
        },
    }
    model = {**MODELS[0], "ood": ood}
    summary = ood_summary_table([model])
    assert summary is not None
    assert "vs 'test' (fog_0.02) and 'val' (rain)" in html.unescape(summary)
    assert "rain vs val" in ood_set_table([model], "rain")
    assert "fog_0.02 vs test" in ood_set_table([model], "fog_0.02")
    old = {**MODELS[0], "ood": {**ood, "sets": {"rain": result}}}
    assert "rain vs test" in ood_set_table([old], "rain")


def test_models_that_share_no_evaluated_split_are_refused_by_name(tmp_path: Path) -> None:
    """Every comparison figure is drawn on one split all models have: with none, a clear
    error naming each model's splits, not a KeyError from the first figure."""
    models = [
        ReportModel({"name": "a", "kind": "student", "splits": {"wrong": {}}}, tmp_path, tmp_path),
        ReportModel({"name": "b", "kind": "student", "splits": {"test": {}}}, tmp_path, tmp_path),
    ]
    with pytest.raises(SegdistillError, match=r"share no evaluated split \(a: wrong; b: test\)"):
        build_report(models)
