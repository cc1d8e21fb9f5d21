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
    PAGE_WIDTH,
    Claims,
    ReportModel,
    _sample_figures,
    anomaly_table,
    best_in_columns,
    best_in_rows,
    build_report,
    changed_weights,
    claims_html,
    experiment_direction,
    load_models,
    metric,
    ood_set_table,
    ood_summary_table,
    per_class_table,
    per_split_table,
    png_width,
    summary_table,
    teacher_table,
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
        "pavpu": ("uncertainty", "pavpu", "max"),
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


def chromium(tmp_path: Path) -> Any:
    """A headless Chromium driver (quit it when done)."""
    webdriver, service = browser()
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
    return webdriver.Chrome(service=service(CHROMEDRIVER), options=options)


def test_report_renders_in_chromium(evaluated: Path, tmp_path: Path) -> None:
    report = write_report([evaluated / "out"], tmp_path / "report.html", title="tiny report")
    page = report.read_text()
    # Self-contained: no external resource of any kind.
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "<script" not in page

    driver = chromium(tmp_path)
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
    # The second run read again after the clash (a results.json holding it, say): still
    # two models, not a third name for the same run.
    again = load_models([evaluated / "dudes", tmp_path / "dudes", tmp_path / "dudes"])
    assert [m.name for m in again] == ["dudes", "dudes_2"]
    # A run of the name the suffix would take keeps its own name; the clash takes the next.
    shutil.copytree(tmp_path / "dudes", tmp_path / "dudes_2")
    metrics["name"] = "dudes_2"
    metrics["source"] = str(tmp_path / "dudes_2" / "checkpoints" / "best.safetensors")
    (tmp_path / "dudes_2" / METRICS_FILE).write_text(json.dumps(metrics))
    three = load_models([evaluated / "dudes", tmp_path / "dudes_2", tmp_path / "dudes"])
    assert [m.name for m in three] == ["dudes", "dudes_2", "dudes_3"]


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
    # A title with its own brackets gets the remark inside them, not a second pair.
    page = per_class_table(MODELS, "test", "iou", "high", "IoU per class (test)")
    assert "<caption>IoU per class (test; higher is better)</caption>" in page
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


def test_models_with_other_classes_are_refused_by_name(tmp_path: Path) -> None:
    """The per-class tables line models up by class index: a model of other classes would
    show its values under the first model's class names."""

    def model(name: str, classes: list[str]) -> ReportModel:
        metrics = {"name": name, "kind": "student", "splits": {"test": {}}, "class_names": classes}
        return ReportModel(metrics, tmp_path, tmp_path)

    with pytest.raises(
        SegdistillError, match=r"different classes \(a: road, car; b: car, road\): report models"
    ):
        build_report([model("a", ["road", "car"]), model("b", ["car", "road"])])


def table_cells(page: str) -> tuple[list[str], list[list[tuple[str | None, str]]]]:
    """The header texts and, per body row, (data-metric key or None, text) of each cell of
    one HTML table (escaped text as written)."""
    head = re.findall(r"<th>(.*?)</th>", page[: page.index("<tbody>")])
    rows = [
        [
            (key or None, cell)
            for key, cell in re.findall(
                r'<t[hd][^>]*?(?:data-metric="([^"]*)")?>(.*?)</t[hd]>', row
            )
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", page[page.index("<tbody>") :])
    ]
    return head, rows


def with_teacher(model: dict, teacher: str, iou_diff: list[float], unc_diff: list[float]) -> dict:
    """`model` evaluated against `teacher`: evaluate's stored student - teacher differences."""
    splits = {
        "test": {
            "iou": iou_diff,
            "miou": sum(iou_diff) / len(iou_diff),
            "per_class_mean_uncertainty": unc_diff,
            "class_mean_uncertainty": sum(unc_diff) / len(unc_diff),
            "paired": {"pearson": 0.5},
        }
    }
    return {**model, "vs_teacher": {"teacher": teacher, "splits": splits}}


def test_per_class_differences_are_student_minus_a_teacher_in_the_report() -> None:
    """DUDES Tables 1-2: a "student − teacher" column per student whose teacher is in the
    report, signed; a student of a teacher not in the report has none; bold only among
    the models' own values, never a difference."""
    teacher = fake_model("t", [0.0, 0.5, 0.3], [0.2, 0.2, 0.2], 0.1, "ensemble pred_std")
    # s - t by hand: road 0.2 - 0.0, car 0.4 - 0.5, wall 0.3 - 0.3.
    student = with_teacher(
        fake_model("s", [0.2, 0.4, 0.3], [0.1, 0.3, 0.2], 0.1, "student head (scalar)"),
        "t",
        [0.2, -0.1, 0.0],
        [-0.1, 0.1, 0.0],
    )
    orphan = with_teacher(
        fake_model("o", [0.1, 0.1, 0.1], [0.1, 0.1, 0.1], 0.1, "student head (scalar)"),
        "absent",
        [0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1],
    )
    page = per_class_table([teacher, student, orphan], "test", "iou", "high", "IoU")
    head, rows = table_cells(page)
    assert head == ["class", "t", "s", "o", "s − t"]
    cells = {key: text for row in rows for key, text in row if key}
    assert cells["s/test/iou_diff/road"] == "+0.2000"
    assert cells["s/test/iou_diff/car"] == "-0.1000"
    assert cells["s/test/iou_diff/wall"] == "+0.0000"
    assert cells["s/test/iou_diff/mean"] == "+0.0333"
    assert "<tr><th>road</th>" in page
    assert not any(key.startswith("o/") and "_diff" in key for key in cells)
    # road: s (0.2, its difference too); car: t; wall: a tie of s and t, o lower;
    # mean: t 0.2667 vs s 0.3.
    assert bold_keys(page) == {
        "s/test/iou/road",
        "t/test/iou/car",
        "s/test/iou/wall",
        "t/test/iou/wall",
        "s/test/iou/mean",
    }


def test_no_uncertainty_difference_between_measures_of_other_scales() -> None:
    """A baseline's 1 - max softmax (about 0.9) minus an ensemble's pred_std (about 0.01)
    is no student - teacher difference (DUDES Table 2 compares a head trained on the
    teacher's std with that std): its per-class uncertainty table shows no number there,
    while its IoU difference, and a student head's uncertainty difference, stay."""
    teacher = fake_model("t", [0.0, 0.5, 0.3], [0.01, 0.02, 0.03], 0.1, "ensemble pred_std")
    baseline = with_teacher(
        fake_model("b", [0.2, 0.4, 0.3], [0.91, 0.92, 0.93], 0.1, "1 - max softmax"),
        "t",
        [0.2, -0.1, 0.0],
        [0.9, 0.9, 0.9],
    )
    student = with_teacher(
        fake_model("s", [0.2, 0.4, 0.3], [0.02, 0.02, 0.02], 0.1, "student head (scalar)"),
        "t",
        [0.2, -0.1, 0.0],
        [0.01, 0.0, -0.01],
    )
    models = [teacher, baseline, student]
    unc = dict(
        item
        for row in table_cells(per_class_table(models, "test", "uncertainty", None, "U"))[1]
        for item in row
        if item[0]
    )
    assert unc["s/test/uncertainty_diff/road"] == "+0.0100"
    numbers = {k: v for k, v in unc.items() if k.startswith("b/") and "_diff" in k and v != "n/a"}
    assert numbers == {}, numbers
    iou = dict(
        item
        for row in table_cells(per_class_table(models, "test", "iou", "high", "IoU"))[1]
        for item in row
        if item[0]
    )
    assert iou["b/test/iou_diff/road"] == "+0.2000"


def test_the_teacher_table_bolds_the_most_correlated_student() -> None:
    a = with_teacher(MODELS[0], "t", [0.0] * 3, [0.0] * 3)
    b = with_teacher(MODELS[1], "t", [0.0] * 3, [0.0] * 3)
    b["vs_teacher"]["splits"]["test"]["paired"] = {"pearson": 0.8}
    page = teacher_table([a, b])
    assert page is not None
    assert bold_keys(page) == {"b/vs_teacher/test/pearson"}
    assert teacher_table(MODELS) is None  # no student: no table


def ood_result(auroc: float, aupr: float, fpr95: float, reference: str = "test") -> dict:
    return {
        "reference": reference,
        "best_aggregator": "mean",
        "by_aggregator": {"mean": {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}},
    }


def test_the_ood_tables_show_every_set_and_each_column_under_its_header() -> None:
    a = {**MODELS[0], "ood": {"reference": "test", "aggregators": ["mean"], "sets": {}}}
    a["ood"]["sets"] = {"night": ood_result(0.9, 0.6, 0.3)}
    b = {**MODELS[1], "ood": {"reference": "test", "aggregators": ["mean"], "sets": {}}}
    fog = ood_result(0.55, 0.5, 0.4)
    fog["by_aggregator"]["max"] = {"auroc": 0.6, "aupr": 0.5, "fpr95": 0.4}
    fog["best_aggregator"] = "max"
    b["ood"]["sets"] = {"night": ood_result(0.7, 0.8, 0.5), "fog": fog}
    # A set only the second model was scored on is a column all the same, n/a for a.
    head, rows = table_cells(ood_summary_table([a, b]) or "")
    assert head == ["model", "night", "fog"]
    assert rows[0][2] == ("a/ood/fog/best/auroc", "n/a")
    assert rows[1][2] == ("b/ood/fog/best/auroc", "0.6000")  # its best aggregator's
    page = ood_set_table([a, b], "night")
    head, rows = table_cells(page)
    assert head == ["model", "mean AUROC ↑", "mean AUPR ↑", "mean FPR95 ↓"]
    assert rows[0] == [
        (None, "a"),
        ("a/ood/night/mean/auroc", "0.9000"),
        ("a/ood/night/mean/aupr", "0.6000"),
        ("a/ood/night/mean/fpr95", "0.3000"),
    ]
    # Higher AUROC and AUPR, lower FPR95 is better.
    assert bold_keys(page) == {
        "a/ood/night/mean/auroc",
        "b/ood/night/mean/aupr",
        "a/ood/night/mean/fpr95",
    }
    # An aggregator only the second model lists (another version's file) gets its
    # columns, n/a for the first: it was left out when only the first model's counted.
    b["ood"] = {**b["ood"], "aggregators": ["mean", "max"]}
    b["ood"]["sets"]["night"]["by_aggregator"]["max"] = {"auroc": 0.8, "aupr": 0.7, "fpr95": 0.2}
    head, rows = table_cells(ood_set_table([a, b], "night"))
    assert head[4:] == ["max AUROC ↑", "max AUPR ↑", "max FPR95 ↓"]
    assert rows[0][4] == ("a/ood/night/max/auroc", "n/a")
    assert rows[1][4] == ("b/ood/night/max/auroc", "0.8000")


def test_the_anomaly_table_bolds_the_lower_fpr95() -> None:
    def anomaly(ap: float, auroc: float, fpr95: float, anomalous: int) -> dict:
        return {
            "split": "anomaly",
            "ap": ap,
            "auroc": auroc,
            "fpr95": fpr95,
            "num_anomaly_pixels": anomalous,
            "num_normal_pixels": 1000 - anomalous,
        }

    a = {**MODELS[0], "anomaly": anomaly(0.4, 0.8, 0.2, 30)}
    b = {**MODELS[1], "anomaly": anomaly(0.5, 0.7, 0.6, 30)}
    page = anomaly_table([a, b])
    assert page is not None
    head, rows = table_cells(page)
    assert head[2:] == ["AP ↑", "AUROC ↑", "FPR95 ↓", "anomaly pixels", "normal pixels"]
    assert rows[0][5:] == [
        ("a/pixel_anomaly/num_anomaly_pixels", "30"),
        ("a/pixel_anomaly/num_normal_pixels", "970"),
    ]
    assert bold_keys(page) == {
        "b/pixel_anomaly/ap",
        "a/pixel_anomaly/auroc",
        "a/pixel_anomaly/fpr95",
    }


def test_tables_show_sets_and_columns_that_only_some_models_have() -> None:
    """A split only the second model was evaluated on is a column (n/a for the first); the
    summary shows an experiment's role and every column of the split's results."""
    night = {"segmentation": {"miou": 0.25}}
    b = {**MODELS[1], "role": "baseline", "splits": {**MODELS[1]["splits"], "night": night}}
    head, rows = table_cells(per_split_table([MODELS[0], b], "miou", "mIoU"))
    assert head == ["model", "test", "night"]
    assert rows[0][2] == ("a/night/miou", "n/a") and rows[1][2] == ("b/night/miou", "0.2500")
    head, rows = table_cells(summary_table([MODELS[0], b], "test"))
    assert rows[1][1] == (None, "baseline") and rows[0][1] == (None, "student")
    assert "pAvPU max ↑" in head and "AURC ↓" in head and "E-AURC ↓" in head
    keys = [key for key, _ in rows[0] if key]
    assert "a/test/pavpu" in keys and "a/test/eaurc" in keys
    assert len(head) == len(rows[0])


def test_the_checks_and_the_run_steps() -> None:
    claims = Claims(
        title="t",
        header=["model"],
        rows=[["a"]],
        checks=[(True, "first"), (False, "second <b>"), (True, "third")],
        steps=[("train", 90.0, 2048.0), ("report", 30.0, None)],
        notes=["a <b>note</b> & more"],
    )
    page = claims_html(claims, notes=["<i>measures</i>"])
    assert '<p class="note">a &lt;b&gt;note&lt;/b&gt; &amp; more</p>' in page
    assert '<p class="note">&lt;i&gt;measures&lt;/i&gt;</p>' in page
    assert "<h3>Checks: 2 of 3 pass</h3>" in page
    assert '<li class="pass">first</li>' in page and '<li class="pass">third</li>' in page
    assert '<li class="fail">second &lt;b&gt;</li>' in page
    # 120 s = 2.0 min; 2048 MiB = 2.00 GiB; the step without a peak shows "-".
    assert "<summary>Run: 2 steps, 2.0 min, largest peak RSS 2.00 GiB</summary>" in page
    assert "<tr><th>train</th><td>90.0</td><td>2.00</td></tr>" in page
    assert "<tr><th>report</th><td>30.0</td><td>-</td></tr>" in page


def test_a_run_directory_reads_its_own_metrics_before_a_results_file(tmp_path: Path) -> None:
    run = {"name": "run", "kind": "student", "splits": {}}
    (tmp_path / METRICS_FILE).write_text(json.dumps(run))
    results = {"models": [{**run, "name": "other"}]}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    assert [m.name for m in load_models([tmp_path])] == ["run"]


def test_the_page_escapes_names_and_shows_every_shifted_set(
    evaluated: Path, tmp_path: Path
) -> None:
    """Model names, uncertainty measures and set names come from files: none reaches the
    page as markup. A set only the second model was scored on has its table too. A plain
    evaluation's results.json has no experiment table."""
    evil = '<evil a="1">&'
    results = json.loads((evaluated / "out" / RESULTS_FILE).read_text())
    for model in results["models"]:
        ood = model["ood"]
        ood["sets"] = {evil if s == "night" else s: r for s, r in ood["sets"].items()}
        ood["image_scores"] = {
            evil if s == "night" else s: r for s, r in ood["image_scores"].items()
        }
        if model["name"] == "dudes":
            model["name"], model["uncertainty_source"] = evil, evil
            ood["sets"]["fog"] = ood["sets"][evil]
            ood["image_scores"]["fog"] = ood["image_scores"][evil]
    shutil.copytree(evaluated / "out", tmp_path / "out")  # its figures, under the new name
    (tmp_path / "out" / RESULTS_FILE).write_text(json.dumps(results))
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "out" / RESULTS_FILE), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<evil" not in page and 'a="1"' not in page
    assert page.count(html.escape(evil)) > 5
    assert f'data-metric="{html.escape(evil)}/test/miou"' in page
    assert f"<summary>{html.escape(evil)}: every aggregator</summary>" in page
    assert "<summary>fog: every aggregator</summary>" in page
    assert 'data-metric="ens/ood/fog/best/auroc">n/a<' in page
    assert "<h2>Students vs teacher (ens)</h2>" in page
    assert '<section id="claims"' not in page


def test_the_teacher_section_names_the_teacher_the_students_were_compared_with(
    evaluated: Path, tmp_path: Path
) -> None:
    """A smaller ensemble reported before the students' own teacher gave its name to the
    heading ("Students vs teacher (ens-small)") over a table of differences to ens."""
    results = json.loads((evaluated / "out" / RESULTS_FILE).read_text())
    ensemble = next(m for m in results["models"] if m["name"] == "ens")
    results["models"].insert(0, {**ensemble, "name": "ens-small"})
    shutil.copytree(evaluated / "out", tmp_path / "out")
    (tmp_path / "out" / RESULTS_FILE).write_text(json.dumps(results))
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "out" / RESULTS_FILE), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<h2>Students vs teacher (ens)</h2>" in page
    assert "<b>n/a</b>: no value" in page  # the glossary says what n/a means


def test_changed_weights_names_a_run_trained_after_its_evaluation(
    evaluated: Path, tmp_path: Path
) -> None:
    assert changed_weights(load_models([evaluated / "dudes"])) == []
    metrics = json.loads((evaluated / "dudes" / METRICS_FILE).read_text())
    (tmp_path / METRICS_FILE).write_text(json.dumps({**metrics, "weights": "0" * 64}))
    lines = changed_weights(load_models([tmp_path]))
    assert len(lines) == 1 and lines[0].startswith("dudes: its metrics")


# Which way each summary metric is better, written out here apart from the report's own
# SPLIT_COLUMNS: (header, data-metric suffix, better).
SUMMARY_COLUMNS = [
    ("mIoU ↑", "test/miou", "high"),
    ("pixel acc ↑", "test/pixel_accuracy", "high"),
    ("class acc ↑", "test/mean_class_accuracy", "high"),
    ("ECE ↓", "test/ece", "low"),
    ("misc. AUROC ↑", "test/misclassification_auroc", "high"),
    ("misc. AUPR ↑", "test/misclassification_aupr", "high"),
    ("misc. FPR95 ↓", "test/misclassification_fpr95", "low"),
    ("AURC ↓", "test/aurc", "low"),
    ("E-AURC ↓", "test/eaurc", "low"),
    ("pAvPU max ↑", "test/pavpu", "high"),
    ("mean unc.", "test/pixel_mean_uncertainty", None),
    ("anomaly AP ↑", "pixel_anomaly/ap", "high"),
    ("anomaly AUROC ↑", "pixel_anomaly/auroc", "high"),
]


def summary_model(name: str, value: float, parameters: int) -> dict:
    """A model whose every summary metric is `value` (an anomaly AUROC of value + 0.01)."""
    return {
        **fake_model(name, [value] * 3, [value] * 3, value, "1 - max softmax"),
        "parameters": parameters,
        "splits": {
            "test": {
                "segmentation": {
                    "miou": value,
                    "pixel_accuracy": value,
                    "mean_class_accuracy": value,
                },
                "calibration": {"ece": value},
                "uncertainty": {
                    "misclassification": {"auroc": value, "aupr": value, "fpr95": value},
                    "aurc": value,
                    "eaurc": value,
                    "pavpu": {"max": value},
                    "pixel_mean": value,
                },
            }
        },
        "anomaly": {"ap": value, "auroc": value + 0.01},
    }


def test_every_summary_column_is_under_its_header_and_bolds_its_better_direction() -> None:
    """Each header sits over the cells of its own metric, and the bold cell is the higher
    value where higher is better and the lower where lower is (FPR95, AURC, E-AURC, ECE);
    no bold for the mean uncertainty, whose measures differ."""
    low, high = summary_model("lo", 0.2, 1_234_567), summary_model("hi", 0.6, 7)
    page = summary_table([low, high], "test")
    head, rows = table_cells(page)
    start = head.index("mIoU ↑")
    assert head[start:] == [header for header, _, _ in SUMMARY_COLUMNS]
    for row, name, value in zip(rows, ("lo", "hi"), (0.2, 0.6), strict=True):
        for (key, text), (_, suffix, _) in zip(row[start:], SUMMARY_COLUMNS, strict=True):
            assert key == f"{name}/{suffix}"
            shown = value + 0.01 if suffix == "pixel_anomaly/auroc" else value
            assert text == f"{shown:.4f}"
    expected = {
        f"{'hi' if better == 'high' else 'lo'}/{suffix}"
        for _, suffix, better in SUMMARY_COLUMNS
        if better
    }
    assert bold_keys(page) == expected
    # Parameter counts with thousands separators, not as decimals.
    assert '<td class="num" data-metric="lo/parameters">1,234,567</td>' in page


def test_the_per_set_table_bolds_every_sets_best_model() -> None:
    """Best per set (column), the last set too; lower ECE is better."""

    def with_ece(name: str, test: float, night: float) -> dict:
        model = fake_model(name, [0.5] * 3, [0.1] * 3, test, "1 - max softmax")
        return {**model, "splits": {**model["splits"], "night": {"calibration": {"ece": night}}}}

    models = [with_ece("a", 0.10, 0.30), with_ece("b", 0.20, 0.25)]
    page = per_split_table(models, "ece", "ECE per set")
    assert bold_keys(page) == {"a/test/ece", "b/night/ece"}
    assert "<caption>ECE per set (lower is better)</caption>" in page


def section_of(page: str, caption: str) -> str:
    """The HTML table whose caption starts with `caption`."""
    start = page.index(f"<caption>{caption}")
    return page[page.rindex("<table>", 0, start) : page.index("</table>", start)]


def test_the_page_bolds_each_tables_better_direction_and_escapes_the_teacher(
    evaluated: Path,
) -> None:
    """In the page itself: the per-set ECE table bolds the lower ECE, the misclassification
    AUROC and IoU tables the higher value; a teacher's name from a file is no markup in
    the teacher heading, nor is a missing sample figure's path; the summary is of "test"
    however the splits are ordered in the file."""
    results = json.loads((evaluated / "out" / RESULTS_FILE).read_text())
    evil = '<evil a="1">&'
    ens, dudes = results["models"]
    ens["name"] = evil
    dudes["vs_teacher"]["teacher"] = evil
    for model in (ens, dudes):
        model["splits"] = {s: model["splits"][s] for s in ("night", "anomaly", "test")}
    for model, ece, auroc, iou in ((ens, 0.1, 0.9, 0.2), (dudes, 0.3, 0.6, 0.7)):
        test = model["splits"]["test"]
        test["calibration"]["ece"] = ece
        test["uncertainty"]["misclassification"]["auroc"] = auroc
        test["segmentation"]["iou"][0] = iou  # road
    dudes["figures"]["samples_<i>"] = "figures/<i>.png"
    out = evaluated / "out"
    page = build_report([ReportModel(m, out, out / RESULTS_FILE) for m in results["models"]])
    e = html.escape(evil)
    ece = bold_keys(section_of(page, "ECE per set"))
    assert f"{e}/test/ece" in ece and "dudes/test/ece" not in ece
    misc = bold_keys(section_of(page, "Misclassification AUROC per set"))
    assert f"{e}/test/misclassification_auroc" in misc
    assert "dudes/test/misclassification_auroc" not in misc
    iou = bold_keys(section_of(page, "IoU per class (test; higher is better)"))
    assert "dudes/test/iou/road" in iou and f"{e}/test/iou/road" not in iou
    assert f"<h2>Students vs teacher ({e})</h2>" in page
    assert "&lt;i&gt;.png is missing." in page
    assert "<evil" not in page and "<i>" not in page
    assert "<caption>Metrics on test</caption>" in page


def test_a_model_named_with_dollar_signs_and_without_figures_is_reported(
    evaluated: Path,
) -> None:
    """`run$a_b_c$` failed the report's own figures as mathtext ("Double subscript"), and a
    hand-edited "figures": null ended in an AttributeError."""
    results = json.loads((evaluated / "out" / RESULTS_FILE).read_text())
    ens, dudes = results["models"]
    ens["name"] = "run$a_b_c$"
    dudes["figures"] = None
    out = evaluated / "out"
    page = build_report([ReportModel(m, out, out / RESULTS_FILE) for m in results["models"]])
    assert "run$a_b_c$" in page and "<img" in page


def test_cells_that_read_alike_are_a_tie_in_bold() -> None:
    """ECE 0.01234 and 0.01231 both read 0.0123: neither is bolded over the other; the
    best is judged as the values are shown (DIGITS decimals)."""
    assert DIGITS == 4
    rows = [[metric("a", 0.01234)], [metric("b", 0.01231)], [metric("c", 0.0200)]]
    assert best_in_columns(rows, ["low"]) == {(0, 0), (1, 0)}
    assert best_in_columns(rows[:2], ["low"]) == set()  # all alike: best of nothing
    assert best_in_columns(rows, ["high"]) == {(2, 0)}
    # 0.01236 reads 0.0124: then 0.01231 alone is best.
    rows[0] = [metric("a", 0.01236)]
    assert best_in_columns(rows, ["low"]) == {(1, 0)}
    # Integers (parameters) as they are.
    integers = [[metric("p", 1_000_001), metric("q", 1_000_000)]]
    assert best_in_rows(integers, [0, 1], "low") == {(0, 1)}


@pytest.mark.parametrize(
    "damage",
    [
        "a split that is not an object",
        "a name that is not text",
        "a results entry that is not an object",
        "an experiment's results without its table",
    ],
)
def test_a_damaged_metrics_file_is_a_one_line_error_naming_it(
    evaluated: Path, tmp_path: Path, damage: str, capsys
) -> None:
    """A metrics.json edited by hand or written by another version passed the top-level
    check (name, splits / models) and ended in an AttributeError or TypeError traceback
    (exit status 1) deep in the report."""
    metrics = json.loads((evaluated / "dudes" / METRICS_FILE).read_text())
    if damage == "a split that is not an object":
        metrics["splits"]["test"] = "x"
        content: Any = metrics
    elif damage == "a name that is not text":
        content = {**metrics, "name": 5}
    elif damage == "a results entry that is not an object":
        content = {"models": [5]}
    else:  # a KeyError 'table' from experiment_claims
        content = {"schema": "segdistill.experiment/1", "models": [metrics]}
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(content))
    assert main(["report", str(damaged), "--out", str(tmp_path / "r.html")]) == 2
    assert str(damaged) in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------- an experiment's tables, samples, figures


def cell_classes(page: str) -> list[list[tuple[str, str]]]:
    """Per body row of one HTML table: (class attribute, text) of each cell."""
    body = page[page.index("<tbody>") :]
    return [
        [
            (cls, cell)
            for cls, cell in re.findall(r'<t[hd](?: class="([^"]*)")?[^>]*>(.*?)</t[hd]>', row)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body)
    ]


def test_an_experiments_tables_read_like_the_others() -> None:
    """The paper-shaped table and the OOD-flag table showed every cell as left-set text:
    numbers are set right, metric headers carry their arrow, the best row is bold (as the
    cells read: the mean of "mean ± std", a share in %); the threshold and the uncertainty
    mean have no direction, a seed sweep no bold."""
    claims = Claims(
        title="paper",
        header=["model", "label", "mIoU", "class-mean unc.", "latency ms", "OOD AUROC fog"],
        rows=[
            ["t", "teacher", "0.6000", "0.1000", "50.00", "0.9000"],
            ["s", "DUDES", "0.5000 ± 0.2000", "0.3000", "10.00", "-"],
            ["b", "labels only", "0.5500 ± 0.0100", "0.2000", "12.00", "0.8000"],
        ],
        checks=[],
        tables=[
            (
                "images flagged as OOD",
                ["model", "threshold", "test", "fog", "anomaly"],
                [["t", "0.1084", "9%", "38%", "9%"], ["s", "0.4373", "12%", "97%", "16%"]],
            ),
            ("ablation seed", ["seed", "miou"], [["0", "0.5000"], ["7", "0.6000"]]),
        ],
    )
    models = [{"ood": {"reference": "test", "sets": {"fog": {"reference": "test"}}}}]
    page = claims_html(claims, models=models)
    paper, flags, seeds = (page[i : page.index("</table>", i)] for i in _tables(page))
    head, _ = table_cells(paper)
    assert head == [
        "model",
        "label",
        "mIoU ↑",
        "class-mean unc.",
        "latency ms ↓",
        "OOD AUROC fog ↑",
    ]
    rows = cell_classes(paper)
    # Row header, text label, then the numbers set right; bold: mIoU 0.6 (t), latency
    # 10.00 (s), OOD AUROC 0.9 (t); "-" set right too, never bold.
    assert rows[0] == [
        ("", "t"),
        ("", "teacher"),
        ("num best", "0.6000"),
        ("num", "0.1000"),
        ("num", "50.00"),
        ("num best", "0.9000"),
    ]
    assert rows[1][2:] == [
        ("num", "0.5000 ± 0.2000"),
        ("num", "0.3000"),
        ("num best", "10.00"),
        ("num", "-"),
    ]
    assert [cls for cls, _ in rows[2]] == ["", "", "num", "num", "num", "num"]
    head, _ = table_cells(flags)
    assert head == ["model", "threshold", "test ↓", "fog ↑", "anomaly"]
    assert cell_classes(flags) == [
        [("", "t"), ("num", "0.1084"), ("num best", "9%"), ("num", "38%"), ("num", "9%")],
        [("", "s"), ("num", "0.4373"), ("num", "12%"), ("num best", "97%"), ("num", "16%")],
    ]
    head, _ = table_cells(seeds)
    assert head == ["seed", "miou ↑"]
    assert cell_classes(seeds) == [[("", "0"), ("num", "0.5000")], [("", "7"), ("num", "0.6000")]]


def _tables(page: str) -> list[int]:
    return [m.start() for m in re.finditer("<table>", page)]


def test_every_experiment_metric_has_its_direction() -> None:
    """Each metric an experiment's table or ablation can show (pipeline METRICS) has a
    direction (a metric added later without one fails here), found by its header (with a
    split) and by its name; the directions that decide a bold, checked by hand."""
    from segdistill.pipeline.checks import METRICS, PER_CLASS_METRICS

    directions = {name: experiment_direction(name) for name in METRICS}
    for name, better in directions.items():
        header = METRICS[name].header
        assert experiment_direction(header) == better, header
        assert experiment_direction(f"{header} night") == better, header
    hand = {"miou": "high", "ece": "low", "latency_ms": "low", "ood_auroc": "high"}
    hand |= {"aurc": "low", "class_mean_uncertainty": None, "parameters_m": None}
    hand |= {"misclassification_fpr95": "low", "pavpu": "high", "eaurc": "low"}
    hand |= dict.fromkeys(PER_CLASS_METRICS)  # lists per class: never ranked
    assert {name: directions[name] for name in hand} == hand
    assert experiment_direction("threshold", ["fog"], ["test"]) is None
    assert experiment_direction("fog", ["fog"], ["test"]) == "high"
    assert experiment_direction("test", ["fog"], ["test"]) == "low"


def test_the_teacher_table_ranks_the_students_and_names_the_baseline_not_distilled() -> None:
    """An experiment's baseline (trained on labels only) was a row like the students' and
    took the bold with the highest r: it is the last row, "b (not distilled)", never bold;
    without a role (a plain evaluation) a model of kind baseline counts as a student."""

    def compared(name: str, r: float, role: str | None) -> dict:
        model = with_teacher(
            fake_model(name, [0.5] * 3, [0.1] * 3, 0.1, "x"), "t", [0.0] * 3, [0.0] * 3
        )
        model["vs_teacher"]["splits"]["test"]["paired"] = {"pearson": r}
        return {**model, "role": role} if role else {**model, "kind": "baseline"}

    models = [
        compared("b", 0.9, "baseline"),
        compared("s1", 0.5, "student"),
        compared("s2", 0.7, "student"),
    ]
    page = teacher_table(models)
    assert page is not None
    _, rows = table_cells(page)
    assert [row[0] for row in rows] == [(None, "s1"), (None, "s2"), (None, "b (not distilled)")]
    assert rows[2][2] == ("b/vs_teacher/test/pearson", "0.9000")
    assert bold_keys(page) == {"s2/vs_teacher/test/pearson"}
    assert "b (not distilled): trained on labels only" in page
    plain = teacher_table([compared("b", 0.9, None), compared("s1", 0.5, None)])
    assert plain is not None and "not distilled" not in plain
    assert bold_keys(plain) == {"b/vs_teacher/test/pearson"}


def png(path: Path, width: int, height: int = 4) -> Path:
    from PIL import Image

    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
    return path


def test_sample_figures_show_the_main_split_first_and_say_what_they_show(
    evaluated: Path, tmp_path: Path
) -> None:
    """ "ens: sets" came before "ens: test" (file-name order): the summary's split first
    (val where test has no labelled pixel), then other splits, then the sets figure."""
    page = build_report(load_models([evaluated / "out"]))
    samples = page[page.index('<section id="samples"') :]
    alts = re.findall(r'<img src="data:image/png;base64,[^"]*" alt="([^"]*)"', samples)
    columns = "columns: image, ground truth, prediction, accuracy (white: wrong), uncertainty"
    assert alts == [
        f"ens: test images, one per row; {columns}",
        f"ens: one image per evaluated set (the first of each), one per row; {columns}",
        f"dudes: test images, one per row; {columns}",
        f"dudes: one image per evaluated set (the first of each), one per row; {columns}",
    ]
    figures = {
        key: str(png(tmp_path / f"{key}.png", 8))
        for key in ("samples_sets", "samples_test", "samples_val")
    }
    splits = {"test": {"num_pixels": 0}, "val": {"num_pixels": 10}}
    model = ReportModel({"name": "m", "splits": splits, "figures": figures}, tmp_path, tmp_path)
    alts = re.findall(r'alt="m: ([^,;]*)', _sample_figures(model))
    assert alts == ["val images", "test images", "one image per evaluated set (the first of each)"]


def test_a_figure_wider_than_the_page_opens_at_full_size(evaluated: Path, tmp_path: Path) -> None:
    """A 2000 px figure was only ever shown scaled down to the page (its text with it): a
    click on it shows it at its own size in a box that scrolls sideways, another fits it
    again; a figure the page holds has no switch. In Chromium, without a script."""
    assert png_width(png(tmp_path / "w.png", 1234, 5).read_bytes()) == 1234
    assert png_width(b"GIF89a" + bytes(30)) is None
    results = json.loads((evaluated / "out" / RESULTS_FILE).read_text())
    ens, dudes = results["models"]
    ens["figures"] = {"samples_test": str(png(tmp_path / "wide.png", PAGE_WIDTH + 600))}
    dudes["figures"] = {"samples_test": str(png(tmp_path / "fits.png", PAGE_WIDTH))}
    out = evaluated / "out"
    page = build_report([ReportModel(m, out, out / RESULTS_FILE) for m in results["models"]])
    samples = page[page.index('<section id="samples"') :]
    assert samples.count('<figure class="wide">') == 1
    assert f"full size ({PAGE_WIDTH + 600} px wide)" in samples
    assert re.search(r'<figure><img src="data:image/png;base64,[^"]*" alt="dudes: test', samples)
    (tmp_path / "r.html").write_text(page)

    driver = chromium(tmp_path)
    try:
        driver.set_window_size(1600, 1000)
        driver.get((tmp_path / "r.html").as_uri())
        width = (
            "return document.querySelector('img[alt^=\"{}: test\"]').getBoundingClientRect().width"
        )
        assert driver.execute_script(width.format("dudes")) == PAGE_WIDTH  # its own size
        assert driver.execute_script(width.format("ens")) <= PAGE_WIDTH  # fitted
        driver.execute_script("document.querySelector('img[alt^=\"ens: test\"]').click()")
        assert driver.execute_script(width.format("ens")) == PAGE_WIDTH + 600
        box = "return document.querySelector('figure.wide .zoomed')"
        assert driver.execute_script(box + ".scrollWidth") > driver.execute_script(
            box + ".clientWidth"
        )
        driver.execute_script("document.querySelector('label.zoom').click()")
        assert driver.execute_script(width.format("ens")) <= PAGE_WIDTH
    finally:
        driver.quit()


def test_a_caption_shows_its_code_spans_as_code() -> None:
    """The pipeline's table titles are Markdown (table.md): `segdistill predict` in the
    OOD-flag table's title showed its backticks in the report; text stays escaped."""
    from segdistill.report import _table, text

    page = _table(["a"], [[text("1")]], caption="flags <x> (`segdistill predict --ood-detector`):")
    assert "<caption>flags &lt;x&gt; (<code>segdistill predict --ood-detector</code>):" in page
    assert "`" not in page
