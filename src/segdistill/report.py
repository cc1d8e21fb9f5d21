"""One self-contained HTML page comparing evaluated models.

`write_report(inputs, out)` reads evaluation results written by `segdistill evaluate`:

- a run or ensemble directory holding `metrics.json` (one model),
- a `metrics.json` file,
- a `results.json` file, or a directory holding one (every model of one evaluation,
  e.g. the demo's `runs/demo/results.json`),

and writes one HTML file with inline CSS and every figure embedded as a base64 PNG data
URI, so it opens anywhere without other files or a network. Sections: for an experiment
(`segdistill.pipeline`) its paper-shaped table and the checks, PASS / FAIL; a summary table
(one row per model), mIoU and uncertainty quality per evaluated set (Holder Table 2),
per-class IoU and per-class mean uncertainty with student - teacher differences (DUDES
Tables 1-2), student vs teacher agreement, image-level OOD tables per set and aggregator,
pixel-level anomaly detection, the comparison figures of `segdistill.figures` and each
model's sample predictions. Figures of one model (OOD curves, sample predictions) are the
PNGs evaluate wrote, found through the model's "figures" entry; the comparison figures
are drawn from the metrics with `segdistill.figures`.

Every table cell showing a metric carries `data-metric="<model>/<path>"` (e.g.
"teacher/test/miou", "dudes/ood/fog_0.02/mean/auroc", "dudes/pixel_anomaly/ap"; the
keys are listed in docs/evaluation.md) and shows the value rounded to `DIGITS` decimals
("n/a" for an undefined one). An experiment's own tables (the paper table, the OOD flags,
the ablations) show the numbers the pipeline formatted, without a key, but set right, with
arrows and bold like the others (`experiment_table`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import math
import re
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdistill import figures
from segdistill.atomic import atomic_write_text
from segdistill.defaults import RESULTS_FILE, uncertainty_scale
from segdistill.errors import ConfigError, SegdistillError
from segdistill.evaluate import METRICS_FILE, ood_versus, summary_split
from segdistill.figures import AGGREGATOR_LABELS, pick_split
from segdistill.metric_fields import SPLIT_METRICS, dig, split_value
from segdistill.ood_detector import scored_map

DIGITS = 4
# Sample figures evaluate writes per model (shown as image files, not redrawn).
SAMPLE_PREFIX = "samples_"


@dataclass
class ReportModel:
    """One model's results and the folder its "figures" paths are relative to."""

    metrics: dict[str, Any]
    base: Path
    origin: Path

    @property
    def name(self) -> str:
        return self.metrics["name"]


def load_models(inputs: Sequence[str | Path]) -> list[ReportModel]:
    """The models of every input (module doc), in order. A model read twice (the same name
    from the same source) is kept once; different models with one name get a suffix."""
    models: list[ReportModel] = []
    for item in inputs:
        models += _load_input(Path(item))
    unique: list[ReportModel] = []
    read: set[tuple[str, str]] = set()  # (name in its file, source) of the models kept
    names: set[str] = set()  # the names they are shown under
    for model in models:
        name, source = model.name, model.metrics.get("source", "")
        if (name, source) in read:
            continue
        read.add((name, source))
        if name in names:
            suffix = 2
            while f"{name}_{suffix}" in names:
                suffix += 1
            model.metrics = {**model.metrics, "name": f"{name}_{suffix}"}
        names.add(model.name)
        unique.append(model)
    return unique


def changed_weights(models: Sequence[ReportModel]) -> list[str]:
    """A line for each model whose weights are no longer those its metrics were measured
    on (`weights`, the evaluated predictor's fingerprint, against its `source` now): a run
    trained on, or resumed, after `segdistill evaluate` would show old figures under its
    name. Models of older files (no fingerprint) or whose source is gone are not checked."""
    from segdistill.predictor import load_predictor

    lines = []
    for model in models:
        recorded, source = model.metrics.get("weights"), model.metrics.get("source")
        if not recorded or not source or not Path(source).exists():
            continue
        try:
            now = load_predictor(source).fingerprint()
        except SegdistillError as error:
            lines.append(f"{model.name}: its weights cannot be checked ({error})")
            continue
        if now != recorded:
            lines.append(
                f"{model.name}: its metrics ({model.origin}) were measured on other weights "
                f"than {source} holds now; run `segdistill evaluate` on it again"
            )
    return lines


def input_file(path: Path) -> Path:
    """The JSON file a report input names: the file itself, or a directory's metrics.json
    (a run or ensemble), else its results.json (an evaluation or an experiment)."""
    if not path.is_dir():
        return path
    for name in (METRICS_FILE, RESULTS_FILE):
        if (path / name).is_file():
            return path / name
    # A network of an experiment: its results are in the experiment's results.json.
    experiment = next((p for p in path.resolve().parents if (p / RESULTS_FILE).is_file()), None)
    inside = f"; it is part of the experiment in {experiment}: give that" if experiment else ""
    raise SegdistillError(
        f"{path} has no {METRICS_FILE} or {RESULTS_FILE}: run `segdistill evaluate "
        f"{path} --data DATA_DIR` first{inside}"
    )


def _load_input(path: Path) -> list[ReportModel]:
    path = input_file(path)
    if not path.is_file():
        raise SegdistillError(f"{path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SegdistillError(f"{path} is not a JSON file ({error})") from error
    if isinstance(content, dict) and isinstance(content.get("models"), list):
        models = content["models"]
        for index, model in enumerate(models):
            _check_model(model, f"{path}: models[{index}]")
        return [ReportModel(m, path.parent, path) for m in models]
    if isinstance(content, dict) and "splits" in content and "name" in content:
        _check_model(content, str(path))
        return [ReportModel(content, path.parent, path)]
    raise SegdistillError(
        f"{path} holds neither one model's metrics (name, splits) nor a results file "
        "(models); it was not written by `segdistill evaluate`"
    )


def _check_model(model: Any, where: str) -> None:
    """SegdistillError naming `where` unless `model` has the shape every table and figure
    reads (a name, a kind, splits of objects): a file edited by hand or written by
    another program would otherwise end in a traceback deep in the report."""
    if not isinstance(model, dict):
        raise SegdistillError(f"{where} is {model!r}, not a model's metrics (an object)")
    for key in ("name", "kind"):
        if not isinstance(model.get(key), str):
            raise SegdistillError(f"{where}: {key!r} is {model.get(key)!r}, not text")
    splits = model.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise SegdistillError(
            f"{where}: 'splits' must map each split's name to its metrics (objects); "
            "was the file edited, or written by another program?"
        )


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------


@dataclass
class Claims:
    """An experiment's verdict, as text the pipeline formats: the paper-shaped table
    (`header`, `rows` of cells), more tables under it as (caption, header, rows), notes
    under the tables (how a column was measured), one (passed, line) per check outcome,
    and the run's steps in order as (name, seconds, peak resident MiB or None when not
    recorded)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    checks: list[tuple[bool, str]]
    steps: list[tuple[str, float, float | None]] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """A table cell: text, or a metric value with its data-metric key. `numeric`: a number
    without a data-metric key (an experiment's tables, formatted by the pipeline), set
    right like the metric cells; `value` is what the bold compares."""

    text: str
    metric: str | None = None
    value: float | None = None
    header: bool = False
    numeric: bool = False


def number(value: float | int | None, signed: bool = False) -> str:
    """How a metric is shown: DIGITS decimals, "n/a" when undefined."""
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:+.{DIGITS}f}" if signed else f"{value:.{DIGITS}f}"


def metric(key: str, value: float | None, signed: bool = False) -> Cell:
    return Cell(number(value, signed), key, value)


def text(value: Any, header: bool = False) -> Cell:
    return Cell(str(value), header=header)


# Which way a metric is better: "high", "low", or None (no direction, e.g. a mean
# uncertainty, or values in different measures); shown as an arrow after a header.
ARROWS = {"high": "↑", "low": "↓"}
DIRECTION_WORDS = {"high": "higher is better", "low": "lower is better"}


def directed(header: str, better: str | None) -> str:
    """A metric column's header with the arrow of its better direction: "ECE ↓"."""
    return f"{header} {ARROWS[better]}" if better else header


def _code_spans(escaped: str) -> str:
    """Escaped text with its `code` spans (the pipeline's titles are Markdown, for
    table.md) as <code>: a command in a caption showed its backticks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def with_remark(title: str, remark: str) -> str:
    """`title` with `remark` in brackets: "mIoU per set (higher is better)"; inside the
    title's own closing bracket when it ends with one ("IoU per class (test; higher is
    better)"), not a second pair."""
    if title.endswith(")"):
        return f"{title[:-1]}; {remark})"
    return f"{title} ({remark})"


def _caption(title: str, better: str | None) -> str:
    """A caption naming the better direction, for tables whose columns are not metrics
    (sets, models): "mIoU per set (higher is better)"."""
    return with_remark(title, DIRECTION_WORDS[better]) if better else title


def _best(
    cells: Sequence[tuple[tuple[int, int], float | None]], better: str | None
) -> set[tuple[int, int]]:
    """The (row, column) positions among `cells` ((position, value)) holding the best
    value in direction `better`; none without a direction, with fewer than two values or
    with all values equal (a lone value, or a tie of all, is best of nothing). Values are
    compared as shown (`number`: DIGITS decimals), so two cells that read alike are a tie,
    never one bold beside its equal."""
    shown = {at: _as_shown(value) for at, value in cells if value is not None}
    values = set(shown.values())
    if better is None or len(values) < 2:
        return set()
    top = max(values) if better == "high" else min(values)
    return {at for at, value in shown.items() if value == top}


def _as_shown(value: float) -> float:
    """A metric value rounded as `number` shows it (integers as they are)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return float(f"{value:.{DIGITS}f}")


def best_in_columns(
    rows: Sequence[Sequence[Cell]], better: Sequence[str | None]
) -> set[tuple[int, int]]:
    """Bold cells of a table whose rows are models and columns metrics: per column j, the
    best model's cell in direction better[j]."""
    return set().union(
        *(
            _best([((i, j), row[j].value) for i, row in enumerate(rows) if j < len(row)], b)
            for j, b in enumerate(better)
        )
    )


def best_in_rows(
    rows: Sequence[Sequence[Cell]], columns: Sequence[int], better: str | None
) -> set[tuple[int, int]]:
    """Bold cells of a table whose rows are classes and `columns` models: per row, the
    best model's cell in direction `better`."""
    return set().union(
        *(_best([((i, j), row[j].value) for j in columns], better) for i, row in enumerate(rows))
    )


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    best: set[tuple[int, int]] | None = None,
    caption: str | None = None,
) -> str:
    """An HTML table; the cells at the (row, column) positions `best` are bold (the best
    model, from `best_in_columns` or `best_in_rows`)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            classes = []
            if cell.metric is not None or cell.numeric:
                classes.append("num")
            if best and (i, j) in best:
                classes.append("best")
            attrs = f' class="{" ".join(classes)}"' if classes else ""
            if cell.metric is not None:
                attrs += f' data-metric="{html.escape(cell.metric)}"'
            tag = "th" if cell.header else "td"
            cells.append(f"<{tag}{attrs}>{html.escape(cell.text)}</{tag}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{_code_spans(html.escape(caption))}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# (header, data-metric suffix, path in a split's results, better)
# The metric_fields.SPLIT_METRICS of the summary table, in its order.
SPLIT_COLUMNS = (
    "miou",
    "pixel_accuracy",
    "mean_class_accuracy",
    "ece",
    "misclassification_auroc",
    "misclassification_aupr",
    "misclassification_fpr95",
    "aurc",
    "eaurc",
    "pavpu",
    "pixel_mean_uncertainty",
)


def summary_table(models: Sequence[dict[str, Any]], split: str) -> str:
    """One row per model: identity, the SPLIT_COLUMNS on `split`, anomaly AP / AUROC. The
    "kind" column gives an experiment's role (teacher, baseline, student) where the
    results have one: a student distilled without an uncertainty head loads as kind
    "baseline", which says how its uncertainty is made, not what it is."""
    names = ["model", "kind", "members", "parameters", "uncertainty"]
    names += [SPLIT_METRICS[name].header for name in SPLIT_COLUMNS]
    names += ["anomaly AP", "anomaly AUROC"]
    better = [None] * 5 + [SPLIT_METRICS[name].better for name in SPLIT_COLUMNS]
    better += ["high", "high"]
    headers = [directed(name, b) for name, b in zip(names, better)]
    rows = []
    for m in models:
        name = m["name"]
        row = [
            text(name, header=True),
            text(m.get("role", m["kind"])),
            metric(f"{name}/members", m["members"]),
            metric(f"{name}/parameters", m["parameters"]),
            text(m["uncertainty_source"]),
        ]
        row += [
            metric(f"{name}/{split}/{key}", split_value(m, split, key)) for key in SPLIT_COLUMNS
        ]
        row += [
            metric(f"{name}/pixel_anomaly/ap", dig(m, "anomaly", "ap")),
            metric(f"{name}/pixel_anomaly/auroc", dig(m, "anomaly", "auroc")),
        ]
        rows.append(row)
    return _table(headers, rows, best_in_columns(rows, better), caption=f"Metrics on {split}")


def per_split_table(models: Sequence[dict[str, Any]], key: str, title: str) -> str:
    """Rows: models; columns: every evaluated set; cells: the SPLIT_METRICS metric `key`."""
    splits = list(dict.fromkeys(s for m in models for s in m["splits"]))
    rows = [
        [text(m["name"], header=True)]
        + [metric(f"{m['name']}/{s}/{key}", split_value(m, s, key)) for s in splits]
        for m in models
    ]
    better = SPLIT_METRICS[key].better
    # Best per column means best model on that set.
    best = best_in_columns(rows, [None, *[better] * len(splits)])
    return _table(["model", *splits], rows, best, caption=_caption(title, better))


def _teacher_of(model: dict[str, Any], names: set[str]) -> str | None:
    teacher = dig(model, "vs_teacher", "teacher")
    return teacher if teacher in names else None


# Per-class tables: the SPLIT_METRICS of the values per class and of their mean, and where
# evaluate stored the student - teacher differences (per class and of the mean).
PER_CLASS = {
    "iou": ("per_class_iou", "miou", "iou", "miou"),
    "uncertainty": (
        "per_class_mean_uncertainty",
        "class_mean_uncertainty",
        "per_class_mean_uncertainty",
        "class_mean_uncertainty",
    ),
}


def per_class_table(
    models: Sequence[dict[str, Any]], split: str, kind: str, better: str | None, title: str
) -> str:
    """Rows: classes and their mean; columns: each model's value (`kind` "iou" or
    "uncertainty"), then student - teacher for each model evaluated against a teacher that
    is in the report (DUDES Tables 1-2). Keys "<model>/<split>/<kind>/<class>" and
    "<model>/<split>/<kind>_diff/<class>", class "mean" for the last row.

    Bold: per class (row), the best model in direction `better` (None: no bold). The
    uncertainty columns name each model's measure, which differ between models."""
    values, mean, diffs, mean_diff = PER_CLASS[kind]
    names = {m["name"] for m in models}
    students = [m for m in models if _teacher_of(m, names)]
    if kind == "uncertainty":
        # A difference of measures of two scales (1 - max softmax minus pred_std) is no
        # student - teacher difference: those columns are left out.
        sources = {m["name"]: m["uncertainty_source"] for m in models}
        students = [
            m
            for m in students
            if uncertainty_scale(m["uncertainty_source"])
            == uncertainty_scale(sources[m["vs_teacher"]["teacher"]])
        ]
    headers = ["class"]
    headers += [
        f"{m['name']} ({m['uncertainty_source']})" if kind == "uncertainty" else m["name"]
        for m in models
    ]
    headers += [f"{m['name']} − {m['vs_teacher']['teacher']}" for m in students]
    rows = []
    for c, cls in enumerate([*models[0]["class_names"], "mean"]):
        last = cls == "mean"
        row = [text(cls, header=True)]
        row += [
            metric(
                f"{m['name']}/{split}/{kind}/{cls}",
                split_value(m, split, mean) if last else dig(split_value(m, split, values), c),
            )
            for m in models
        ]
        row += [
            metric(
                f"{m['name']}/{split}/{kind}_diff/{cls}",
                dig(m, "vs_teacher", "splits", split, *((mean_diff,) if last else (diffs, c))),
                signed=True,
            )
            for m in students
        ]
        rows.append(row)
    best = best_in_rows(rows, range(1, 1 + len(models)), better)
    return _table(headers, rows, best, caption=_caption(title, better))


# The name an experiment's baseline is shown under where students are compared: it was
# trained on labels only, so it is not a student.
NOT_DISTILLED = "not distilled"


def teacher_table(models: Sequence[dict[str, Any]]) -> str | None:
    """Pearson r of student vs teacher uncertainty per set (Holder Fig. 3 as numbers).

    Every model evaluated against a teacher ("vs_teacher") is a row, but an experiment's
    baseline (role "baseline": trained on labels only) is no student: its row comes last,
    named "<name> (not distilled)", and is never bold. It stays as the reference a student
    should beat: the correlation a network reaches without distillation. Without a role
    (a plain evaluation) every such model counts as a student: kind "baseline" only says
    that a model has no uncertainty head, and a distilled student may have none."""
    compared = [m for m in models if m.get("vs_teacher")]
    if not compared:
        return None
    students = [m for m in compared if m.get("role") != "baseline"]
    references = [m for m in compared if m.get("role") == "baseline"]
    splits = list(dict.fromkeys(s for m in compared for s in m["vs_teacher"]["splits"]))
    rows = [
        [
            text(m["name"] if student else f"{m['name']} ({NOT_DISTILLED})", header=True),
            text(m["vs_teacher"]["teacher"]),
        ]
        + [
            metric(
                f"{m['name']}/vs_teacher/{s}/pearson",
                dig(m, "vs_teacher", "splits", s, "paired", "pearson"),
            )
            for s in splits
        ]
        for m, student in [*((m, True) for m in students), *((m, False) for m in references)]
    ]
    caption = _caption("Pearson correlation of student and teacher uncertainty per pixel", "high")
    if references:
        names = ", ".join(m["name"] for m in references)
        caption += f"; {names} ({NOT_DISTILLED}): trained on labels only, a reference, never bold"
    return _table(
        ["model", "teacher", *splits],
        rows,
        # The best student: the rows of the students only (the first ones).
        best_in_columns(rows[: len(students)], [None, None, *["high"] * len(splits)]),
        caption=caption,
    )


def ood_summary_table(models: Sequence[dict[str, Any]]) -> str | None:
    """Rows: models; columns: shifted sets; cells: AUROC of the best aggregator."""
    with_ood = [m for m in models if m.get("ood")]
    if not with_ood:
        return None
    sets = list(dict.fromkeys(s for m in with_ood for s in m["ood"]["sets"]))
    rows = []
    for m in with_ood:
        row = [text(m["name"], header=True)]
        for s in sets:
            best = dig(m, "ood", "sets", s, "best_aggregator")
            value = dig(m, "ood", "sets", s, "by_aggregator", best, "auroc") if best else None
            row.append(metric(f"{m['name']}/ood/{s}/best/auroc", value))
        rows.append(row)
    own_maps = [
        f"{m['name']} scores its {scored_map(m)}"
        for m in with_ood
        if scored_map(m) != "uncertainty"
    ]
    maps = f"; {', '.join(own_maps)}, the others their uncertainty" if own_maps else ""
    return _table(
        ["model", *sets],
        rows,
        best_in_columns(rows, [None, *["high"] * len(sets)]),
        caption=_caption(
            f"Image-level OOD AUROC {ood_versus(with_ood)}, best aggregator per model and "
            f"set{maps}",
            "high",
        ),
    )


def ood_set_table(models: Sequence[dict[str, Any]], name: str) -> str:
    """One shifted set: rows models; AUROC / AUPR / FPR95 of every aggregator."""
    with_set = [m for m in models if dig(m, "ood", "sets", name)]
    # Every model's aggregators, in order of first appearance (files of other versions
    # may score with others); a model without one shows n/a there.
    aggregators = list(dict.fromkeys(a for m in with_set for a in m["ood"]["aggregators"]))
    headers: list[str] = ["model"]
    better: list[str | None] = [None]
    for agg in aggregators:
        label = AGGREGATOR_LABELS.get(agg, agg)
        for metric_name, direction in (("AUROC", "high"), ("AUPR", "high"), ("FPR95", "low")):
            headers.append(directed(f"{label} {metric_name}", direction))
            better.append(direction)
    rows = []
    for m in with_set:
        row = [text(m["name"], header=True)]
        for agg in aggregators:
            result = dig(m, "ood", "sets", name, "by_aggregator", agg)
            row += [
                metric(f"{m['name']}/ood/{name}/{agg}/{k}", dig(result, k))
                for k in ("auroc", "aupr", "fpr95")
            ]
        rows.append(row)
    caption = f"{name} vs {figures.set_reference(with_set[0]['ood'], name)}"
    return _table(headers, rows, best_in_columns(rows, better), caption=caption)


def anomaly_table(models: Sequence[dict[str, Any]]) -> str | None:
    with_anomaly = [m for m in models if m.get("anomaly")]
    if not with_anomaly:
        return None
    rows = [
        [
            text(m["name"], header=True),
            text(m["uncertainty_source"]),
            metric(f"{m['name']}/pixel_anomaly/ap", m["anomaly"]["ap"]),
            metric(f"{m['name']}/pixel_anomaly/auroc", m["anomaly"]["auroc"]),
            metric(f"{m['name']}/pixel_anomaly/fpr95", m["anomaly"]["fpr95"]),
            metric(
                f"{m['name']}/pixel_anomaly/num_anomaly_pixels", m["anomaly"]["num_anomaly_pixels"]
            ),
            metric(
                f"{m['name']}/pixel_anomaly/num_normal_pixels", m["anomaly"]["num_normal_pixels"]
            ),
        ]
        for m in with_anomaly
    ]
    names = ["model", "score", "AP", "AUROC", "FPR95", "anomaly pixels", "normal pixels"]
    better = [None, None, "high", "high", "low", None, None]
    return _table(
        [directed(name, b) for name, b in zip(names, better)],
        rows,
        best_in_columns(rows, better),
        caption=f"Pixel-level anomaly detection on {with_anomaly[0]['anomaly']['split']}",
    )


# ----------------------------------------------------------------------------------------
# Figures and page
# ----------------------------------------------------------------------------------------


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(draw: Callable[[], Any], caption: str) -> str:
    """A drawn figure embedded as a PNG data URI with its caption ("" when None)."""
    figure = draw()
    if figure is None:
        return ""
    return _img(figures.png_bytes(figure), caption)


# The widest figure the page shows at its own size, in CSS pixels: main's max-width (of
# its content) less a figure's padding and right margin (CSS). A wider one is scaled down
# to it, its text with it.
PAGE_WIDTH = 1400 - 2 * 8 - 12


def png_width(png: bytes) -> int | None:
    """A PNG's width in pixels (its IHDR chunk); None for bytes that are no PNG."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    return int(struct.unpack(">I", png[16:20])[0])


def _img(png: bytes, caption: str) -> str:
    """A figure: the PNG as a data URI and its caption. One wider than PAGE_WIDTH is shown
    fitted to the page, its text shrunk with it; a click on it (or on "full size") shows
    it at its own size in a box that scrolls sideways, and another click fits it again.
    Without a script: a checkbox before the image, styled by CSS (`.zoom:checked`)."""
    uri, alt = _data_uri(png), html.escape(caption)
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>"
    width = png_width(png)
    if width is None or width <= PAGE_WIDTH:
        return f'<figure><img src="{uri}" alt="{alt}">{caption_html}</figure>'
    # The switch's id, from what it shows: the same page each time, unique in it.
    switch = "zoom-" + hashlib.sha256(f"{caption}\n{uri}".encode()).hexdigest()[:16]
    return (
        f'<figure class="wide"><input type="checkbox" class="zoom" id="{switch}">'
        f'<label class="zoom" for="{switch}">full size ({width} px wide)</label>'
        f'<div class="zoomed"><label for="{switch}"><img src="{uri}" alt="{alt}"></label></div>'
        f"{caption_html}</figure>"
    )


def _model_figure(
    model: ReportModel, key: str, draw: Callable[[dict[str, Any]], Any], caption: str
) -> str:
    """One model's own figure: the PNG evaluate wrote when it is there (the same drawing,
    without the time to draw it again), else drawn from the metrics."""
    relative = (model.metrics.get("figures") or {}).get(key)
    caption = f"{model.name}: {caption}"
    if relative is not None and (model.base / relative).is_file():
        return _img((model.base / relative).read_bytes(), caption)
    return _figure(lambda: draw(model.metrics), caption)


# The columns of a sample figure (`figures.sample_predictions`), for its caption.
SAMPLE_PANELS = "image, ground truth, prediction, accuracy (white: wrong), uncertainty"
# The key of the figure of the first image of every evaluated set (evaluate).
SAMPLE_SETS = f"{SAMPLE_PREFIX}sets"


def _sample_order(model: ReportModel, key: str) -> tuple[int, str]:
    """Where a sample figure goes: that of the model's main split (`summary_split`, the
    split of the summary table) first, then those of other splits, then the sets."""
    if key == f"{SAMPLE_PREFIX}{summary_split(model.metrics['splits'])}":
        return 0, key
    return (2 if key == SAMPLE_SETS else 1), key


def _sample_caption(model: ReportModel, key: str) -> str:
    """What a sample figure shows: "ens: test images, one per row; columns: image, ..."."""
    if key == SAMPLE_SETS:
        shown = "one image per evaluated set (the first of each)"
    else:
        shown = f"{key.removeprefix(SAMPLE_PREFIX)} images"
    return f"{model.name}: {shown}, one per row; columns: {SAMPLE_PANELS}"


def _sample_figures(model: ReportModel) -> str:
    """The sample-prediction PNGs evaluate wrote for a model, embedded (`_sample_order`)."""
    samples = [
        (key, relative)
        for key, relative in (model.metrics.get("figures") or {}).items()
        if key.startswith(SAMPLE_PREFIX)
    ]
    parts = []
    for key, relative in sorted(samples, key=lambda item: _sample_order(model, item[0])):
        path = model.base / relative
        if path.is_file():
            parts.append(_img(path.read_bytes(), _sample_caption(model, key)))
        else:
            parts.append(f'<p class="note">{html.escape(str(path))} is missing.</p>')
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1d2330;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:24px;margin:18px 0 4px}
h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #d5dae3;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
.meta,.note{color:#5b6473;font-size:13px}
nav a{margin-right:14px;color:#2a5db0;text-decoration:none}
.scroll{overflow-x:auto;margin:8px 0 14px}
table{border-collapse:collapse;background:#fff;font-size:13px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
caption{text-align:left;font-weight:600;padding:4px 2px 6px;color:#343b48}
th,td{padding:4px 10px;border-bottom:1px solid #e6e9ef;white-space:nowrap}
thead th{background:#eef1f6;position:sticky;top:0;text-align:left}
tbody th{text-align:left;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700;color:#0b6b2f}
tbody tr:hover{background:#f3f6fb}
figure{display:inline-block;margin:8px 12px 12px 0;background:#fff;padding:8px;vertical-align:top;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
figure img{max-width:100%;height:auto;display:block}
figure.wide{display:block;max-width:max-content}
.zoomed{overflow-x:auto}.zoomed label{cursor:zoom-in}
input.zoom{margin:0 4px 6px 0;vertical-align:middle}
label.zoom{font-size:12px;color:#2a5db0;cursor:pointer;vertical-align:middle}
input.zoom:checked~.zoomed img{max-width:none}
input.zoom:checked~.zoomed label{cursor:zoom-out}
figcaption{font-size:12px;color:#5b6473;margin-top:4px}
details{margin:6px 0 10px}summary{cursor:pointer;font-weight:600}
ul.checks{list-style:none;padding:0;font-size:13px}
ul.checks li{padding:2px 8px;margin:2px 0;border-left:4px solid #1f8a4c}
ul.checks li.fail{border-left-color:#c0392b;background:#fdf0ee}
"""


# The abbreviations of the tables, explained once under the summary table.
GLOSSARY = (
    (
        "↑ / ↓",
        "higher / lower is better. Bold: the best model on that metric (in a table with a "
        "row per class: the best model of each class); no bold where no direction is better "
        "(mean uncertainty)",
    ),
    (
        "mIoU",
        "mean over the classes of the intersection over union of prediction and label (a "
        "class absent from both is left out)",
    ),
    ("pixel acc, class acc", "share of the labelled pixels predicted right; its mean per class"),
    (
        "ECE",
        "expected calibration error: |accuracy - confidence| per confidence bin, weighted by "
        "the bin's pixels",
    ),
    (
        "misc.",
        "misclassification detection: the uncertainty as the score of 'this pixel is "
        "wrong' (wrong pixels are the positives)",
    ),
    ("AUROC, AUPR", "area under the ROC curve, under the precision-recall curve"),
    ("FPR95", "false positive rate at the threshold that catches 95 % of the positives"),
    (
        "AURC, E-AURC",
        "area under the risk-coverage curve (error rate of the pixels kept, most certain "
        "first); E-AURC subtracts the AURC of a perfect ranking of the same errors (0: "
        "perfect)",
    ),
    (
        "pAvPU",
        "patch accuracy vs patch uncertainty: share of the patches that are accurate and "
        "certain or inaccurate and uncertain, at the best uncertainty threshold (max)",
    ),
    (
        "mean unc., class-mean unc.",
        "mean uncertainty of all pixels; mean over the classes of the mean uncertainty of "
        "the pixels predicted as the class. Each model in its own measure (column "
        "'uncertainty'): values of different measures do not compare",
    ),
    ("anomaly AP, AUROC", "pixel anomaly detection, the uncertainty as the anomaly score"),
    (
        "n/a",
        "no value: the model was not evaluated on that set, the class is absent from its "
        "labels and predictions, or the metric is undefined there (e.g. an AUROC without "
        "a wrong pixel)",
    ),
)


def glossary_html() -> str:
    items = "".join(
        f"<li><b>{html.escape(term)}</b>: {html.escape(meaning)}</li>" for term, meaning in GLOSSARY
    )
    return f'<div class="note" id="glossary">Abbreviations<ul>{items}</ul></div>'


def claims_notes(claims: Claims, models: Sequence[dict[str, Any]]) -> list[str]:
    """Notes under an experiment's tables that its models give: the uncertainty measure
    of each model, since the uncertainty columns compare different measures, and what
    "±" is where a cell has one (the seeds: 1 + the largest seed offset)."""
    by_measure: dict[str, list[str]] = {}
    for model in models:
        by_measure.setdefault(model["uncertainty_source"], []).append(model["name"])
    measures = "; ".join(f"{source}: {', '.join(names)}" for source, names in by_measure.items())
    notes = [f"Uncertainty columns score each model with its own measure ({measures})."]
    if any("±" in cell for row in claims.rows for cell in row):
        seeds = 1 + max(model.get("seed_offset", 0) for model in models)
        notes.append(
            f"Mean ± sample standard deviation (n - 1) over the {seeds} seeds of a model; a "
            "model trained once (the teacher) has no ±."
        )
    return notes


def experiment_direction(
    header: str, shifted: Collection[str] = (), clean: Collection[str] = ()
) -> str | None:
    """Which way the column `header` of an experiment's table is better: a metric's
    header ("mIoU", "OOD AUROC fog_0.02": METRICS' header and its split) or name (an
    ablation's "miou") by its `better` in METRICS (None for values per class); a split's
    share of flagged images (the OOD flag table) "high" on a `shifted` set (images caught)
    and "low" on a `clean` split (false alarms); else None: a column of no metric, like the
    flag table's thresholds, each in its own model's measure."""
    from segdistill.pipeline.checks import METRICS, PER_CLASS_METRICS

    names = {METRICS[name].header: name for name in METRICS} | {name: name for name in METRICS}
    # The longest first: "mIoU gain 50% removed" is not "mIoU" of a split "gain ...".
    for known in sorted(names, key=len, reverse=True):
        if header == known or header.startswith(f"{known} "):
            # A value per class (a list) is not ranked.
            name = names[known]
            return None if name in PER_CLASS_METRICS else METRICS[name].better
    if header in shifted:
        return "high"
    if header in clean:
        return "low"
    return None


def _experiment_number(cell: str) -> float | None:
    """The number an experiment's table cell shows, as the pipeline formats it ("0.2370",
    "0.5000 ± 0.0100": the mean, "9%": 9, "528.62"); None for text or "-". Only ranked
    within a column, whose cells share one format."""
    shown = cell.split(" ± ")[0].strip()
    try:
        value = float(shown.removesuffix("%"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def experiment_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str,
    shifted: Collection[str] = (),
    clean: Collection[str] = (),
) -> str:
    """One of an experiment's tables (text cells the pipeline formatted) as the report's
    other tables show theirs: the first column a row header; a column whose cells are all
    numbers ("-" for none) set right; an arrow after each metric's header; bold, the best
    row of each metric column (`_best`, as the values read). A split's column is a share
    of flagged images (`experiment_direction`)."""
    numeric = [
        j > 0
        and any(_experiment_number(row[j]) is not None for row in rows)
        and all(
            j >= len(row) or row[j] == "-" or _experiment_number(row[j]) is not None for row in rows
        )
        for j in range(len(header))
    ]
    cells = [
        [
            Cell(cell, value=_experiment_number(cell), numeric=True)
            if numeric[j]
            else text(cell, header=j == 0)
            for j, cell in enumerate(row)
        ]
        for row in rows
    ]
    better = [
        experiment_direction(name, shifted, clean) if numeric[j] else None
        for j, name in enumerate(header)
    ]
    # A sweep over the seed: its rows differ only by chance, so no row is the best one
    # (the arrows still say which way each metric is better).
    best = set() if header[:1] == ["seed"] else best_in_columns(cells, better)
    return _table([directed(h, b) for h, b in zip(header, better)], cells, best, caption)


def claims_html(
    claims: Claims, notes: Sequence[str] = (), models: Sequence[dict[str, Any]] = ()
) -> str:
    """The paper-shaped table, the tables under it (`experiment_table`; `models`, the
    results' models, say which splits are shifted sets and which clean), the claims'
    notes and `notes`, and the checks, each line marked PASS (green) or FAIL (red)."""
    shifted = {s for m in models for s in (dig(m, "ood", "sets") or {})}
    clean = {
        reference
        for m in models
        for reference in (
            dig(m, "ood", "reference"),
            dig(m, "ood_flag", "reference_split"),
            *(dig(r, "reference") for r in (dig(m, "ood", "sets") or {}).values()),
        )
        if isinstance(reference, str)
    } - shifted
    passed = sum(ok for ok, _ in claims.checks)
    items = "".join(
        f'<li class="{"pass" if ok else "fail"}">{html.escape(line)}</li>'
        for ok, line in claims.checks
    )
    checks = (
        f'<h3>Checks: {passed} of {len(claims.checks)} pass</h3><ul class="checks">{items}</ul>'
        if claims.checks
        else ""
    )
    tables = [experiment_table(claims.header, claims.rows, claims.title, shifted, clean)]
    tables += [
        experiment_table(header, rows, caption, shifted, clean)
        for caption, header, rows in claims.tables
    ]
    paragraphs = "".join(
        f'<p class="note">{html.escape(note)}</p>' for note in [*claims.notes, *notes]
    )
    paragraphs += '<p class="note">Abbreviations: <a href="#glossary">under the summary</a>.</p>'
    return "".join(tables) + paragraphs + checks + _steps_html(claims.steps)


def _steps_html(steps: list[tuple[str, float, float | None]]) -> str:
    """The run's steps, folded: what each took in time and memory."""
    if not steps:
        return ""
    total = sum(seconds for _, seconds, _ in steps)
    peaks = [peak for _, _, peak in steps if peak is not None]
    largest = f", largest peak RSS {max(peaks) / 1024:.2f} GiB" if peaks else ""
    rows = [
        [
            text(name, header=True),
            text(f"{seconds:.1f}"),
            text("-" if peak is None else f"{peak / 1024:.2f}"),
        ]
        for name, seconds, peak in steps
    ]
    table = _table(["step", "seconds", "peak RSS (GiB)"], rows)
    return (
        f"<details><summary>Run: {len(steps)} steps, {total / 60:.1f} min{largest}</summary>"
        f"{table}</details>"
    )


def _section(anchor: str, title: str, *parts: str | None) -> str:
    body = "".join(p for p in parts if p)
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>' if body else ""


def build_report(
    models: Sequence[ReportModel], title: str = "segdistill report", claims: Claims | None = None
) -> str:
    """The HTML page comparing `models` (module doc), an experiment's `claims` first."""
    if not models:
        raise SegdistillError("no models to report")
    metrics = [m.metrics for m in models]
    if not set.intersection(*(set(m["splits"]) for m in metrics)):
        # Every comparison figure is drawn on one split all the models have.
        evaluated = "; ".join(f"{m.name}: {', '.join(m.metrics['splits'])}" for m in models)
        raise SegdistillError(
            f"the models share no evaluated split ({evaluated}): report models evaluated on "
            "the same data"
        )
    classes = {tuple(m["class_names"]) for m in metrics}
    if len(classes) > 1:
        # The per-class tables and figures line the models' values up by class index.
        listed = "; ".join(f"{m.name}: {', '.join(m.metrics['class_names'])}" for m in models)
        raise SegdistillError(
            f"the models have different classes ({listed}): report models evaluated on the "
            "same data"
        )
    split = pick_split(metrics)
    names = ", ".join(m.name for m in models)
    inputs = "".join(
        f"<li><b>{html.escape(m.name)}</b> ({html.escape(m.metrics['kind'])}): "
        f"{html.escape(str(m.origin))}</li>"
        for m in models
    )
    # The teachers the students were compared with (not the first ensemble listed: a
    # smaller one reported beside the students' own).
    teachers = list(
        dict.fromkeys(m["vs_teacher"]["teacher"] for m in metrics if m.get("vs_teacher"))
    )
    ood_sets = list(dict.fromkeys(s for m in metrics if m.get("ood") for s in m["ood"]["sets"]))
    sections = [
        _section(
            "claims",
            "Paper table and checks",
            claims_html(claims, claims_notes(claims, metrics), metrics) if claims else None,
        ),
        _section(
            "summary",
            "Summary",
            summary_table(metrics, split),
            '<p class="note">Uncertainty metrics treat a wrong pixel as positive; each model '
            "is scored with its own uncertainty (column &ldquo;uncertainty&rdquo;).</p>",
            glossary_html(),
        ),
        _section(
            "sets",
            "Accuracy and uncertainty per evaluated set",
            per_split_table(metrics, "miou", "mIoU per set"),
            per_split_table(metrics, "ece", "ECE per set"),
            per_split_table(metrics, "misclassification_auroc", "Misclassification AUROC per set"),
            _figure(lambda: figures.miou_per_split(metrics), "mIoU per evaluated set"),
        ),
        _section(
            "classes",
            "Per class",
            per_class_table(metrics, split, "iou", "high", f"IoU per class ({split})"),
            per_class_table(
                metrics,
                split,
                "uncertainty",
                None,
                f"Mean uncertainty of the pixels predicted as each class ({split}), each model "
                "in its own measure (column header)",
            ),
            _figure(
                lambda: figures.per_class_uncertainty(metrics, split),
                "Mean uncertainty per predicted class, each model in its own measure (legend)",
            ),
        ),
        _section(
            "uncertainty",
            "Uncertainty quality",
            _figure(lambda: figures.reliability_diagram(metrics, split), "Reliability diagram"),
            _figure(lambda: figures.misclassification_roc(metrics, split), "Misclassification ROC"),
            _figure(
                lambda: figures.miou_vs_removed(metrics, split),
                "mIoU vs removed pixels: the mean over the classes present in the kept pixels "
                "(as DUDES Fig. 4); n/C marks a point where only n of the C classes are left, "
                "where the curve may jump",
            ),
            _figure(
                lambda: figures.iou_after_removal(metrics, split),
                "IoU per class on the pixels kept, 50 % most uncertain removed",
            ),
            _figure(
                lambda: figures.uncertainty_histograms(metrics, split),
                "Uncertainty of correct and wrong pixels",
            ),
        ),
        _section(
            "teacher",
            f"Students vs teacher{'s' if len(teachers) > 1 else ''} ({', '.join(teachers)})"
            if teachers
            else "Students vs teacher",
            teacher_table(metrics),
            _figure(
                lambda: figures.teacher_student_hist2d(metrics, split),
                "Student vs teacher uncertainty per pixel; r: Pearson's over all the model's "
                "pixels, correct and wrong together",
            ),
        ),
        _section(
            "ood",
            "Out-of-distribution detection (images)",
            ood_summary_table(metrics),
            _figure(lambda: figures.ood_auroc_bars(metrics), "OOD AUROC per set"),
            *(
                f"<details><summary>{html.escape(s)}: every aggregator</summary>"
                f"{ood_set_table(metrics, s)}</details>"
                for s in ood_sets
            ),
            *(
                _model_figure(m, "ood_roc", figures.ood_roc_curves, "OOD ROC")
                + _model_figure(m, "ood_scores", figures.ood_score_distributions, "image scores")
                for m in models
            ),
        ),
        _section(
            "anomaly",
            "Anomaly detection (pixels)",
            anomaly_table(metrics),
            _figure(lambda: figures.anomaly_histograms(metrics), "Anomaly score histograms"),
        ),
        _section(
            "samples",
            "Sample predictions",
            *(
                f"<h3>{html.escape(m.name)}</h3>{samples}"
                for m in models
                if (samples := _sample_figures(m))
            ),
        ),
    ]
    present = [
        (anchor, label)
        for anchor, label in (
            ("claims", "Checks"),
            ("summary", "Summary"),
            ("sets", "Per set"),
            ("classes", "Per class"),
            ("uncertainty", "Uncertainty"),
            ("teacher", "Teacher"),
            ("ood", "OOD"),
            ("anomaly", "Anomaly"),
            ("samples", "Samples"),
        )
        if any(s.startswith(f'<section id="{anchor}"') for s in sections)
    ]
    nav = "".join(f'<a href="#{a}">{label}</a>' for a, label in present)
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">{html.escape(names)} &middot; {created}</p>'
        f"<nav>{nav}</nav><details><summary>inputs</summary><ul>{inputs}</ul></details>"
        + "".join(sections)
        + "</main></body></html>\n"
    )


def write_report(
    inputs: Sequence[str | Path],
    out: str | Path,
    title: str = "segdistill report",
    claims: Claims | None = None,
) -> Path:
    """Read the inputs (module doc), write the HTML report to `out`; returns its path.
    ConfigError when `out` is one of the JSON files it reads (it would replace them)."""
    out = Path(out)
    for given in inputs:
        read = input_file(Path(given))
        if read.exists() and read.resolve() == out.resolve():
            raise ConfigError(f"--out {out} is {read}, an input of the report: give another file")
    page = build_report(load_models(inputs), title, claims)
    atomic_write_text(out, page)
    return out
