"""Figures of evaluation results, drawn from the metrics dicts of `segdistill.evaluate`.

Every plotting function is pure: it takes model results (the content of a metrics.json,
or the "models" list of a results.json) and returns one matplotlib `Figure` (Agg canvas,
no pyplot state), or None when the results hold nothing to draw. `save` and `png_bytes`
write it and release it. Functions over `models` draw every model in one figure for
comparison; a model keeps its colour and line style (`model_line`, `model_bar`, by
position) across figures.

| function                   | shows                                                      |
|----------------------------|------------------------------------------------------------|
| reliability_diagram        | accuracy vs confidence per ECE bin                         |
| misclassification_roc      | ROC of wrong-pixel detection by the uncertainty            |
| uncertainty_histograms     | uncertainty of correct vs wrong pixels (Holder Fig. 4)     |
| miou_vs_removed            | mIoU after removing the most uncertain pixels (DUDES F. 4) |
| iou_after_removal          | IoU per class on the pixels kept at one removed share      |
| miou_per_split             | mIoU on each evaluated set (Holder Table 2)                |
| teacher_student_hist2d     | student vs teacher uncertainty per pixel (Holder Fig. 3)   |
| per_class_uncertainty      | mean uncertainty per predicted class (DUDES Table 2)       |
| ood_roc_curves             | image-level OOD ROC per set and aggregator (Holder Fig. 6) |
| ood_score_distributions    | image scores per set (Holder Fig. 7)                       |
| ood_auroc_bars             | best-aggregator OOD AUROC per set and model                |
| anomaly_histograms         | pixel anomaly scores, normal vs anomalous                  |
| ood_flags                  | predicted images' scores against the reference images and  |
|                            | the detector's threshold (`segdistill predict`), arrays    |
| sample_predictions         | image / labels / prediction / accuracy / uncertainty       |
|                            | (Holder Fig. 2, DUDES Fig. 3), from arrays                 |

Histogram plots zoom into the occupied part of the uncertainty range: a std rarely
exceeds 0.3, and a plot over [0, 1] would squeeze it into a few bins.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, NullFormatter
from matplotlib.transforms import Bbox

from segdistill.atomic import atomic_write
from segdistill.data.labels import IGNORE_INDEX, TRAIN_ID_COLORS, colorize
from segdistill.defaults import UNCERTAINTY_VMAX, uncertainty_scale
from segdistill.metrics.ranking import roc_curve
from segdistill.metrics.segmentation import removal_point

Model = dict[str, Any]
AGGREGATOR_LABELS = {
    "min": "min",
    "mean": "mean",
    "median": "median",
    "max": "max",
    "median_plus_min_over_max": "(median + min) / max",
}
# Okabe & Ito's colour-blind-safe qualitative palette, one colour per model by position
# (yellow last: it is faint on white). Past 8 models the colours repeat with the next line
# style, marker and bar hatch (`model_line`, `model_bar`): an experiment with seeds shows
# up to ~30 models, and 4 styles x 8 colours keep 32 apart.
_COLORS = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7",
    "#56B4E9", "#D55E00", "#000000", "#F0E442",
)  # fmt: skip
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")
_HATCHES = ("", "//", "..", "xx")
# Two pixel or image groups (correct / wrong, normal / anomalous, in / out of
# distribution): blue and vermillion, told apart with any colour vision (red / green is not).
GOOD_COLOR, BAD_COLOR = "#0072B2", "#D55E00"
_DPI = 110
# Inches of room kept around text that reached past a figure's planned margins.
_TEXT_PAD = 0.06
# Sample figures hold photographs, which PNG hardly compresses: at 90 dpi their PNGs are
# a third smaller than at _DPI (about 0.65 MB for 8 rows; they were most of a report's
# size), and a 2.2-inch panel (~200 px) still shows a demo image (256 px wide) nearly whole.
SAMPLE_DPI = 90


def _slots(models: Sequence[Model], slots: Sequence[int] | None) -> list[int]:
    """Each model's colour and style index: `slots` (its place among all the models of an
    evaluation, so that a model keeps its colour in the figures of a few of them), or its
    place in `models`."""
    if slots is None:
        return list(range(len(models)))
    if len(slots) != len(models):
        raise ValueError(f"{len(models)} models but {len(slots)} slots")
    return list(slots)


def model_color(index: int) -> str:
    return _COLORS[index % len(_COLORS)]


def _style(index: int, styles: tuple[str, ...]) -> str:
    """The style of model `index`: the next one after every full cycle of colours."""
    return styles[(index // len(_COLORS)) % len(styles)]


def model_line(index: int, marker: bool = True) -> dict[str, str | None]:
    """Line keywords (color, linestyle, marker) of model `index` in a curve plot; no
    marker for dense curves (ROC)."""
    return {
        "color": model_color(index),
        "linestyle": _style(index, _LINESTYLES),
        "marker": _style(index, _MARKERS) if marker else None,
    }


def model_bar(index: int) -> dict[str, str]:
    """Bar keywords (color, hatch; white hatch lines) of model `index` in a bar chart."""
    return {"color": model_color(index), "hatch": _style(index, _HATCHES), "edgecolor": "white"}


def new_figure(width: float, height: float, dpi: int = _DPI) -> Figure:
    """A figure of width x height inches on an Agg canvas, without a layout engine:
    margins are fixed in inches by `axes_grid` (constrained layout would double the
    drawing time of every figure). It is saved at `dpi`."""
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def axes_grid(
    count: int,
    max_cols: int,
    size: tuple[float, float],
    *,
    left: float = 0.75,
    right: float = 0.25,
    bottom: float = 0.6,
    top: float = 0.45,
    wgap: float = 0.75,
    hgap: float = 0.85,
    dpi: int = _DPI,
) -> tuple[Figure, list[Any]]:
    """A figure holding `count` axes of `size` (w, h) inches in rows of at most `max_cols`,
    with the given margins and gaps between axes in inches, saved at `dpi`."""
    cols = min(count, max_cols)
    rows = -(-count // cols)
    width = left + right + cols * size[0] + (cols - 1) * wgap
    height = bottom + top + rows * size[1] + (rows - 1) * hgap
    figure = new_figure(width, height, dpi)
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wgap / size[0],
        hspace=hgap / size[1],
    )
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure, list(axes[:count])


def plain_text() -> AbstractContextManager:
    """Text drawn as written, not as matplotlib's mathtext: model, class, set and file
    names come from files, and a name with two `$` (`run$a_b$`) would otherwise be
    parsed as a formula and fail the whole figure ("Double subscript")."""
    return matplotlib.rc_context({"text.parse_math": False})


def _render(figure: Figure, file: Any, image_format: str, dpi: float | None) -> None:
    """savefig with every text of the figure as plain text (`plain_text`): those made so
    far are switched over, and the tick labels made while drawing follow the setting.

    The margins are fixed in inches, and text from the data (a long measure or class
    name, wide tick labels such as 0.0075) can reach past them: the saved picture then
    grows on that side to hold it, so nothing is cut off; the planned margins are never
    cropped."""
    with plain_text():
        for text in figure.findobj(Text):
            text.set_parse_math(False)
        figure.savefig(file, format=image_format, dpi=dpi or "figure", bbox_inches=_grown(figure))


def _grown(figure: Figure) -> Bbox | None:
    """The figure's canvas (inches) grown on each side that drawn text reaches past, with
    a small pad there; None when everything lies inside."""
    canvas = figure.canvas
    if not isinstance(canvas, FigureCanvasAgg):  # a figure not made by new_figure
        canvas = FigureCanvasAgg(figure)
    if figure.get_layout_engine() is not None:
        # A layout engine (the contact sheets') places the axes when drawing: lay out first.
        figure.draw_without_rendering()
    drawn = figure.get_tightbbox(canvas.get_renderer())
    width, height = figure.get_size_inches()
    if drawn is None:
        return None
    if drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width and drawn.y1 <= height:
        return None
    pad = _TEXT_PAD
    x0, y0 = min(0.0, drawn.x0 - pad), min(0.0, drawn.y0 - pad)
    x1, y1 = max(width, drawn.x1 + pad), max(height, drawn.y1 + pad)
    return Bbox.from_extents(x0, y0, x1, y1)


def save(figure: Figure, path: str | Path, dpi: float | None = None) -> None:
    """Write the figure (PNG, or the format of the path's suffix: .jpg, .svg, .pdf) with
    its folders, all or nothing (`atomic_write`), its text as written (`plain_text`)."""
    image_format = Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda file: _render(figure, file, image_format, dpi))


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, its text as written (`plain_text`)."""
    buffer = io.BytesIO()
    _render(figure, buffer, "png", None)
    return buffer.getvalue()


def pick_split(models: Sequence[Model], split: str | None = None) -> str:
    """`split` when given, else the first split every model has whose ground truth has
    labelled pixels, "test" first (Cityscapes' test masks are all void: then e.g. val);
    with none labelled, "test" when every model has it, else the first split of the first
    model."""
    if split is not None:
        return split
    first = models[0]["splits"]
    common = sorted(
        (s for s in first if all(s in m["splits"] for m in models)), key=lambda s: s != "test"
    )
    labelled = [s for s in common if first[s].get("num_pixels")]
    return (labelled or common or list(first))[0]


def _label(model: Model) -> str:
    """A model in a legend: its name and its role in an experiment (teacher, baseline,
    student: what the report's summary shows), else its kind; the role is left out where
    it repeats the name ("ensemble", not "ensemble (ensemble)")."""
    role = model.get("role", model["kind"])
    return model["name"] if role == model["name"] else f"{model['name']} ({role})"


def _measure_label(model: Model) -> str:
    """A model in a legend of uncertainty values: its name and its uncertainty measure,
    since models of one figure measure uncertainty differently (std, 1 - max softmax)."""
    return f"{model['name']} ({model['uncertainty_source']})"


def _values(items: Sequence[float | None]) -> np.ndarray:
    """JSON numbers with None -> float array with NaN."""
    return np.array([np.nan if v is None else v for v in items], dtype=np.float64)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _occupied_limit(edges: np.ndarray, *histograms: np.ndarray) -> float:
    """Upper edge of the last non-empty bin of any histogram, with a margin."""
    total = np.sum([np.asarray(h, dtype=np.float64) for h in histograms], axis=0)
    nonzero = np.flatnonzero(total)
    last = edges[nonzero[-1] + 1] if nonzero.size else edges[-1]
    return float(min(edges[-1], edges[0] + (last - edges[0]) * 1.05))


def _occupied_range(edges: np.ndarray, *histograms: np.ndarray) -> tuple[float, float]:
    """The x range of histograms over `edges`: from the first to the last non-empty bin,
    with a margin of 5 % of that span; from edges[0] where the empty stretch before the
    first bin is narrower than the occupied span (values near 0 keep 0 as the reference),
    else from just below it (a 1 - max softmax near 0.93 was a sliver at the right edge)."""
    total = np.sum([np.asarray(h, dtype=np.float64) for h in histograms], axis=0)
    nonzero = np.flatnonzero(total)
    if not nonzero.size:
        return float(edges[0]), float(edges[-1])
    first, last = edges[nonzero[0]], edges[nonzero[-1] + 1]
    margin = max(0.05 * (last - first), edges[1] - edges[0])
    low = edges[0] if first - edges[0] <= last - first else first - margin
    return float(max(edges[0], low)), float(min(edges[-1], last + margin))


# Lines of one column of a legend beside the axes (8 pt lines fill ~3 inches).
LEGEND_ROWS = 16


def legend_margin(labels: Sequence[str]) -> float:
    """Right margin (inches) that holds `_legend_outside`'s legend of `labels`: columns
    of LEGEND_ROWS lines, each as wide as the longest label (~0.058 in a character at
    8 pt) plus its handle."""
    columns = -(-len(labels) // LEGEND_ROWS)
    return 0.25 + columns * (0.6 + 0.058 * max(map(len, labels), default=0))


def _legend_outside(ax: Any) -> None:
    """Legend to the right of the axes, where it hides no curve or bar however many
    models there are (`legend_margin` makes room for it)."""
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        borderaxespad=0.8,  # font sizes: a gap that does not grow with the axes' width
        ncol=max(1, -(-entries // LEGEND_ROWS)),
    )


def _note_coarse(
    ax: Any, edges: np.ndarray, *histograms: Sequence[float], what: str = "", y: float = 0.5
) -> None:
    """Say so when all values fall into one plotted bin (a map near 0 everywhere): the
    histogram then shows a single bar (or column) and hides their spread. what: whose
    values ("teacher: "), y: where on the axes, for two notes on one."""
    total = np.sum([np.asarray(h, dtype=np.float64) for h in histograms], axis=0)
    occupied = np.flatnonzero(total)
    if occupied.size == 1:
        k = occupied[0]
        ax.text(
            0.5,
            y,
            f"{what}all values in [{edges[k]:.3g}, {edges[k + 1]:.3g})",
            transform=ax.transAxes,
            ha="center",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        )


def reliability_diagram(
    models: Sequence[Model], split: str | None = None, slots: Sequence[int] | None = None
) -> Figure:
    """Accuracy vs mean confidence of each non-empty ECE bin; the diagonal is perfect
    calibration. Legend: ECE per model. slots: each model's colour (`_slots`)."""
    split = pick_split(models, split)
    calibrations = [model["splits"][split]["calibration"] for model in models]
    labels = [f"{_label(m)}  ECE {_fmt(c['ece'], 4)}" for m, c in zip(models, calibrations)]
    reference = "perfect calibration"
    figure, (ax,) = axes_grid(1, 1, (4.4, 3.6), right=legend_margin([reference, *labels]))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label=reference)
    for i, calibration, label in zip(_slots(models, slots), calibrations, labels):
        conf, acc = _values(calibration["confidence"]), _values(calibration["accuracy"])
        keep = ~np.isnan(conf)
        ax.plot(conf[keep], acc[keep], markersize=4, label=label, **model_line(i))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy")
    ax.set_title(f"Reliability diagram ({split})")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return figure


def misclassification_roc(
    models: Sequence[Model], split: str | None = None, slots: Sequence[int] | None = None
) -> Figure:
    """ROC of detecting wrong pixels by thresholding the uncertainty (wrong = positive),
    drawn from the stored histograms; the legend gives the AUROC of the fine histograms.
    slots: each model's colour (`_slots`)."""
    split = pick_split(models, split)
    uncertainties = [model["splits"][split]["uncertainty"] for model in models]
    labels = [
        f"{_label(m)}  AUROC {_fmt(u['misclassification']['auroc'])}"
        for m, u in zip(models, uncertainties)
    ]
    figure, (ax,) = axes_grid(1, 1, (4.4, 3.6), right=legend_margin(["chance", *labels]))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    for i, unc, label in zip(_slots(models, slots), uncertainties, labels):
        hist = unc["histograms"]
        fpr, tpr = roc_curve(np.asarray(hist["wrong"]), np.asarray(hist["correct"]))
        ax.plot(fpr, tpr, label=label, **model_line(i, marker=False))
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (correct pixels flagged)")
    ax.set_ylabel("true positive rate (wrong pixels flagged)")
    ax.set_title(f"Misclassification detection ({split})")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return figure


def _two_histograms(
    ax: Axes, hist: dict[str, Any], groups: tuple[tuple[str, str], tuple[str, str]]
) -> None:
    """The two pixel groups `groups` ((key, colour), (key, colour)) of a stored histogram
    (`edges` and one count list per key), each normalised to its own total, x axis cut
    where both are empty."""
    edges = np.asarray(hist["edges"])
    for key, color in groups:
        counts = np.asarray(hist[key], dtype=np.float64)
        share = counts / counts.sum() if counts.sum() else counts
        label = f"{key} ({int(counts.sum()):,} px)"
        ax.stairs(share, edges, color=color, fill=True, alpha=0.45, label=label)
    first, second = (hist[key] for key, _ in groups)
    ax.set_xlim(*_occupied_range(edges, first, second))
    _note_coarse(ax, edges, first, second)
    ax.set_ylabel("share of pixels")
    ax.legend(fontsize=8)


def uncertainty_histograms(models: Sequence[Model], split: str | None = None) -> Figure:
    """One panel per model: the uncertainty of correctly and wrongly classified pixels,
    each normalised to its own total (Holder & Shafique Fig. 4)."""
    split = pick_split(models, split)
    figure, axes = axes_grid(len(models), 3, (3.6, 2.8), top=0.75)
    for ax, model in zip(axes, models):
        hist = model["splits"][split]["uncertainty"]["histograms"]
        _two_histograms(ax, hist, (("correct", GOOD_COLOR), ("wrong", BAD_COLOR)))
        ax.set_xlabel(f"uncertainty ({model['uncertainty_source']})", fontsize=8)
        ax.set_title(model["name"], fontsize=10)
    figure.suptitle(f"Uncertainty of correct and wrong pixels ({split})")
    return figure


def classes_present(curve: dict[str, Any]) -> list[int]:
    """Per point of a `miou_vs_removed` curve: how many classes its mIoU averages, i.e.
    have an IoU there ([F][C] `iou`, None for a class absent from the kept pixels)."""
    return [sum(value is not None for value in row) for row in curve["iou"]]


def miou_vs_removed(
    models: Sequence[Model], split: str | None = None, slots: Sequence[int] | None = None
) -> Figure:
    """mIoU of the pixels kept after removing the given share of the most uncertain
    pixels of the data set (DUDES Fig. 4); rising curves mean useful uncertainty.

    The mean is over the classes present in the kept pixels (nanmean, as DUDES), so at a
    high share removed a curve may jump because classes left the mean: each point where
    fewer classes are averaged than at 0 % removed (C: the classes in the evaluated
    pixels, which a small set may not all hold) is labelled "n/C". slots: each model's
    colour (`_slots`)."""
    split = pick_split(models, split)
    labels = [_label(m) for m in models]
    figure, (ax,) = axes_grid(1, 1, (4.4, 3.4), bottom=0.95, right=legend_margin(labels))
    fewer = False
    for k, (i, model, label) in enumerate(zip(_slots(models, slots), models, labels)):
        curve = model["splits"][split]["uncertainty"]["miou_vs_removed"]
        removed, miou = 100 * np.asarray(curve["removed_fraction"]), _values(curve["miou"])
        ax.plot(removed, miou, markersize=4, label=label, **model_line(i))
        present = classes_present(curve)
        # At 0 % removed: a class absent from the set would label every point otherwise.
        total = present[0]
        for x, y, count in zip(removed, miou, present):
            if count < total and not np.isnan(y):
                fewer = True
                ax.annotate(
                    f"{count}/{total}",
                    (x, y),
                    # One line up per model: curves that meet kept their labels apart.
                    xytext=(-3, 4 + 8 * k),
                    textcoords="offset points",
                    ha="right",
                    fontsize=7,
                    color=model_color(i),
                )
    ax.set(xlabel="most uncertain pixels removed (%)")
    ax.set_ylabel("mIoU of the kept pixels\n(mean over the classes present in them)", fontsize=9)
    ax.set_title(f"mIoU vs removed pixels ({split})")
    ax.grid(alpha=0.3)
    if fewer:
        ax.annotate(
            "n/C: only n of the C classes are left in the kept pixels and averaged there",
            (0, 0),
            xycoords="axes fraction",
            xytext=(0, -36),
            textcoords="offset points",
            va="top",
            fontsize=7,
        )
    _legend_outside(ax)
    return figure


def miou_per_split(models: Sequence[Model]) -> Figure:
    """Grouped bars: mIoU of each model on each evaluated set (Holder Table 2)."""
    splits = list(dict.fromkeys(s for m in models for s in m["splits"]))
    per_model = [
        [(model["splits"].get(s) or {}).get("segmentation", {}).get("miou") for s in splits]
        for model in models
    ]
    figure, (ax,), x = _grouped_bars(
        len(splits), per_model, [_label(m) for m in models], range(len(models)), 0.35, 4.4, 1.0
    )
    ax.set_xticks(x, splits, rotation=30, ha="right")
    ax.set_ylabel("mIoU")
    ax.set_title("mIoU per evaluated set")
    _legend_outside(ax)
    return figure


def teacher_student_hist2d(models: Sequence[Model], split: str | None = None) -> Figure | None:
    """Per model compared with a teacher: 2D histograms of student vs teacher uncertainty
    for correctly and wrongly labelled pixels (Holder Fig. 3), log colour scale. The
    Pearson r in both panels' titles is one r over all the model's pixels (correct and
    wrong together): metrics.json stores no r per group, and the binned counts cannot
    give an exact one."""
    students = [m for m in models if m.get("vs_teacher")]
    if not students:
        return None
    split = pick_split(students, split)
    figure, axes = axes_grid(
        2 * len(students), 4, (3.4, 2.8), top=0.95, wgap=1.2, hgap=1.05, left=0.85
    )
    for s, model in enumerate(students):
        paired = model["vs_teacher"]["splits"][split]["paired"]
        hist = paired["hist2d"]
        t_edges, s_edges = np.asarray(hist["teacher_edges"]), np.asarray(hist["student_edges"])
        correct, wrong = np.asarray(hist["correct"]), np.asarray(hist["wrong"])
        t_max = _occupied_limit(t_edges, (correct + wrong).sum(axis=1))
        s_max = _occupied_limit(s_edges, (correct + wrong).sum(axis=0))
        for k, (key, counts, cmap) in enumerate(
            (("correct", correct, "Blues"), ("wrong", wrong, "Oranges"))
        ):
            ax = axes[2 * s + k]
            if counts.sum():
                mesh = ax.pcolormesh(
                    t_edges,
                    s_edges,
                    counts.T,
                    cmap=cmap,
                    norm=LogNorm(vmin=1, vmax=max(counts.max(), 2)),
                )
                colorbar = figure.colorbar(mesh, ax=ax, label="pixels")
                # Numbers, not LogFormatterSciNotation's mathtext, which text drawn as
                # written (`plain_text`) showed as "$\\mathdefault{10^{2}}$".
                colorbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                colorbar.ax.yaxis.set_minor_formatter(NullFormatter())
            # An ensemble's small pred_std can lie in the first teacher bin: one column.
            _note_coarse(ax, t_edges, counts.sum(axis=1), what="teacher: ", y=0.6)
            _note_coarse(ax, s_edges, counts.sum(axis=0), what="student: ", y=0.4)
            same_scale = uncertainty_scale(model["uncertainty_source"]) == uncertainty_scale(
                model["vs_teacher"].get("teacher_uncertainty_source", model["uncertainty_source"])
            )
            if same_scale:  # y = x means nothing between 1 - max softmax and pred_std
                limit = max(t_max, s_max)
                ax.plot([0, limit], [0, limit], color="0.4", linestyle="--", linewidth=0.8)
            ax.set(xlim=(t_edges[0], t_max), ylim=(s_edges[0], s_max))
            ax.set_xlabel(f"teacher ({model['vs_teacher']['teacher']})", fontsize=8)
            # Its role, not "student": a baseline is compared with the teacher as well.
            ax.set_ylabel(_label(model), fontsize=8)
            ax.set_title(
                f"{_label(model)}: {key} pixels\n"
                f"Pearson r over all pixels = {_fmt(paired['pearson'])}",
                fontsize=9,
            )
    figure.suptitle(f"Uncertainty per pixel against the teacher's ({split})")
    return figure


def _grouped_bars(
    groups: int,
    per_model: Sequence[Sequence[float | None]],
    labels: Sequence[str],
    styles: Sequence[int],
    inches_per_bar: float,
    min_width: float,
    bottom: float,
    panels: Sequence[Sequence[int]] | None = None,
) -> tuple[Figure, list[Axes], np.ndarray]:
    """A figure of grouped bars: `groups` groups at x = 0, 1, ..., in each one bar per
    model; `per_model[k]` holds model k's value in each group (None: no bar), `labels[k]`
    its legend entry and `styles[k]` its `model_bar` style. panels: the models of each
    panel, one above the other (default: all in one). Returns (figure, one axes per
    panel, x) for the caller's ticks, labels and legends."""
    panels = [range(len(per_model))] if panels is None else panels
    most = max(len(panel) for panel in panels)
    figure, axes = axes_grid(
        len(panels),
        1,
        (max(min_width, inches_per_bar * groups * (most + 1)), 3.0),
        bottom=bottom,
        hgap=bottom + 0.45,  # the tick labels of the panel above, and a title
        right=legend_margin(labels),
    )
    x = np.arange(groups)
    for ax, panel in zip(axes, panels):
        width = 0.8 / len(panel)
        for k, model in enumerate(panel):
            offset = (k - (len(panel) - 1) / 2) * width
            bar = model_bar(styles[model])
            ax.bar(x + offset, _values(per_model[model]), width, label=labels[model], **bar)
        ax.grid(axis="y", alpha=0.3)
    return figure, axes, x


def _per_class_bars(
    models: Sequence[Model],
    per_model: Sequence[Sequence[float | None]],
    labels: Sequence[str],
    ylabels: Sequence[str],
    title: str,
    slots: Sequence[int] | None,
    panels: Sequence[Sequence[int]] | None = None,
) -> Figure:
    """Grouped bars, one group per class and one bar per model; `per_model[i]` holds model
    i's value of each class (None: no bar), `labels[i]` its legend entry, `slots` the
    models' colours (`_slots`); panels: the models of each panel (`_grouped_bars`), whose
    y axis `ylabels` names, one per panel."""
    names = models[0]["class_names"]
    figure, axes, x = _grouped_bars(
        len(names), per_model, labels, _slots(models, slots), 0.12, 6.0, 0.85, panels
    )
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        _legend_outside(ax)
    axes[0].set_title(title)
    return figure


def per_class_uncertainty(
    models: Sequence[Model], split: str | None = None, slots: Sequence[int] | None = None
) -> Figure:
    """Grouped bars: mean uncertainty of the pixels predicted as each class, per model
    (DUDES Table 2). A class no pixel was predicted as has no bar. One panel per scale of
    uncertainty (`defaults.uncertainty_scale`), with its own y axis: an ensemble's
    pred_std (about 0.05) beside a baseline's 1 - max softmax (about 0.9) on one axis
    showed no bars at all."""
    split = pick_split(models, split)
    per_model = [m["splits"][split]["uncertainty"]["per_class_mean"] for m in models]
    labels = [_measure_label(m) for m in models]
    title = f"Mean uncertainty per predicted class ({split})"
    model_scales = [uncertainty_scale(m["uncertainty_source"]) for m in models]
    scales = list(dict.fromkeys(model_scales))
    panels = [[i for i, own in enumerate(model_scales) if own == scale] for scale in scales]
    ylabels = [f"mean uncertainty\n({scale})" for scale in scales]
    return _per_class_bars(models, per_model, labels, ylabels, title, slots, panels)


def iou_after_removal(
    models: Sequence[Model],
    split: str | None = None,
    fraction: float = 0.5,
    slots: Sequence[int] | None = None,
) -> Figure | None:
    """Grouped bars: IoU of each class on the pixels kept after removing the `fraction`
    most uncertain ones (the point of `miou_vs_removed` at that fraction). A model whose
    uncertainty is high on every pixel of a class removes that class's predictions and
    scores 0 on it. None when a model's curve lacks the fraction."""
    split = pick_split(models, split)
    per_model = []
    for model in models:
        curve = model["splits"][split]["uncertainty"]["miou_vs_removed"]
        point = removal_point(curve, fraction)
        if point is None:
            return None
        per_model.append(curve["iou"][point])
    title = f"IoU per class, {100 * fraction:.0f} % most uncertain pixels removed ({split})"
    labels = [_label(m) for m in models]
    return _per_class_bars(models, per_model, labels, ["IoU of the kept pixels"], title, slots)


def set_reference(ood: dict[str, Any], name: str) -> str:
    """The clean split the shifted set `name` of a model's `ood` results is scored against
    (metrics.json files written before each set recorded its own have only the shared
    `ood.reference`)."""
    return str(ood["sets"][name].get("reference", ood["reference"]))


def ood_roc_curves(model: Model) -> Figure | None:
    """One panel per shifted set: image-level OOD ROC of each aggregator vs the set's
    clean split (Holder Fig. 6)."""
    ood = model.get("ood")
    if not ood or not ood["sets"]:
        return None
    # Room under each panel for its legend (three rows of aggregators and a title).
    figure, axes = axes_grid(
        len(ood["sets"]), 4, (2.9, 2.7), top=0.75, wgap=0.6, bottom=1.5, hgap=1.9
    )
    for ax, (name, result) in zip(axes, ood["sets"].items()):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        aggregators = result["by_aggregator"]
        # Not the models' palette: these are one model's aggregators, not other models.
        colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(aggregators)))
        for color, (agg, metrics) in zip(colors, aggregators.items()):
            best = agg == result["best_aggregator"]
            ax.plot(
                metrics["roc"]["fpr"],
                metrics["roc"]["tpr"],
                color=color,
                linewidth=2.2 if best else 1.1,
                label=f"{AGGREGATOR_LABELS.get(agg, agg)} {_fmt(metrics['auroc'])}",
            )
        # A little room past 0 and 1: a curve along an edge stays visible over the frame.
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.set_title(f"{set_reference(ood, name)} vs {name}", fontsize=10)
        # Under the panel: curves of AUROC 1 run along the left and top edges, and
        # others below the chance line, so no corner inside is free.
        ax.legend(
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncol=2,
            title="AUROC",
            title_fontsize=7,
            frameon=False,
        )
    figure.suptitle(f"{model['name']}: image-level OOD detection by aggregator")
    return figure


def common_best_aggregator(model: Model) -> str | None:
    """The aggregator that is best on most shifted sets (ties: AGGREGATOR_LABELS order)."""
    ood = model.get("ood")
    if not ood:
        return None
    best = [s["best_aggregator"] for s in ood["sets"].values() if s["best_aggregator"]]
    return max(ood["aggregators"], key=best.count) if best else None


def ood_score_distributions(model: Model, aggregator: str | None = None) -> Figure | None:
    """Box plots (with the images as dots) of the image scores of every evaluated set for
    one aggregator, default the one best on most sets (Holder Fig. 7)."""
    ood = model.get("ood")
    aggregator = aggregator or common_best_aggregator(model)
    if not ood or aggregator is None:
        return None
    scores = ood["image_scores"]
    names = list(scores)
    figure, (ax,) = axes_grid(1, 1, (max(4.4, 0.7 * len(names)), 3.0), bottom=1.0)
    data = [np.asarray(scores[n][aggregator], dtype=np.float64) for n in names]
    # Black medians: matplotlib's default orange reads as the out-of-distribution colour.
    ax.boxplot(data, showfliers=False, widths=0.55, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # fixed jitter: the same results draw the same figure
    # Every clean split some set is scored against is in-distribution.
    clean = {ood["reference"], *(set_reference(ood, n) for n in ood["sets"])}
    for i, values in enumerate(data, start=1):
        color = GOOD_COLOR if names[i - 1] in clean else BAD_COLOR
        ax.scatter(i + rng.uniform(-0.18, 0.18, values.size), values, s=8, alpha=0.6, color=color)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel(f"image score: {AGGREGATOR_LABELS.get(aggregator, aggregator)}")
    ax.set_title(f"{model['name']}: image scores per set (blue: in-distribution)")
    ax.grid(axis="y", alpha=0.3)
    return figure


def ood_flags(
    reference_scores: Sequence[float],
    scores: Sequence[float],
    threshold: float,
    aggregator: str,
    title: str,
) -> Figure:
    """Histograms of the image scores of the in-distribution reference images (blue) and
    of the predicted images (vermillion) on shared bins, each as a share of its own images, with
    the threshold above which an image is flagged (dashed)."""
    reference = np.asarray(reference_scores, dtype=np.float64)
    predicted = np.asarray(scores, dtype=np.float64)
    both = np.concatenate([reference, predicted, [threshold]])
    low, high = float(both.min()), float(both.max())
    edges = np.linspace(low, high if high > low else low + 1.0, 31)
    flagged = int(np.count_nonzero(predicted > threshold))
    groups = (
        (reference, GOOD_COLOR, f"reference ({reference.size} images, in-distribution)"),
        (predicted, BAD_COLOR, f"predicted ({flagged} of {predicted.size} flagged)"),
    )
    threshold_label = f"threshold {threshold:.4g}"
    labels = [label for _, _, label in groups] + [threshold_label]
    figure, (ax,) = axes_grid(1, 1, (5.6, 2.8), right=legend_margin(labels))
    for values, color, label in groups:
        counts, _ = np.histogram(values, edges)
        share = counts / max(values.size, 1)
        ax.stairs(share, edges, color=color, fill=True, alpha=0.45, label=label)
    ax.axvline(threshold, color="black", linestyle="--", label=threshold_label)
    ax.set_xlabel(f"image score: {AGGREGATOR_LABELS.get(aggregator, aggregator)} uncertainty")
    ax.set_ylabel("share of images")
    ax.set_title(title, fontsize=10)
    _legend_outside(ax)  # inside, it sat on the bars of close score histograms
    return figure


def ood_auroc_bars(models: Sequence[Model]) -> Figure | None:
    """Grouped bars: the best aggregator's OOD AUROC per shifted set and model."""
    with_ood = [(i, m) for i, m in enumerate(models) if m.get("ood")]
    if not with_ood:
        return None
    sets = list(dict.fromkeys(s for _, m in with_ood for s in m["ood"]["sets"]))
    per_model = []
    for _, model in with_ood:
        values = []
        for name in sets:
            result = model["ood"]["sets"].get(name)
            best = result and result["best_aggregator"]
            values.append(result["by_aggregator"][best]["auroc"] if best else None)
        per_model.append(values)
    labels = [_label(m) for _, m in with_ood]
    styles = [i for i, _ in with_ood]  # a model keeps its colour when others have no OOD
    figure, (ax,), x = _grouped_bars(len(sets), per_model, labels, styles, 0.3, 4.4, 1.0)
    ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
    # Each set's clean split (the same for every model: it follows the evaluated splits);
    # one title names it when all sets share it, else each tick its own.
    references = {
        name: set_reference(m["ood"], name) for _, m in with_ood for name in m["ood"]["sets"]
    }
    shared = set(references.values())
    ticks = sets if len(shared) == 1 else [f"{n} vs {references[n]}" for n in sets]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set(ylim=(0, 1), ylabel="AUROC (best aggregator)")
    against = f"vs {next(iter(shared))}" if len(shared) == 1 else "vs each set's clean split"
    ax.set_title(f"Image-level OOD detection {against}")
    _legend_outside(ax)
    return figure


def anomaly_histograms(models: Sequence[Model]) -> Figure | None:
    """One panel per model: uncertainty of normal and anomalous pixels of the anomaly set
    (each normalised to its total); the title gives AP and AUROC."""
    with_anomaly = [m for m in models if m.get("anomaly")]
    if not with_anomaly:
        return None
    figure, axes = axes_grid(len(with_anomaly), 3, (3.6, 2.8), top=0.75)
    for ax, model in zip(axes, with_anomaly):
        anomaly = model["anomaly"]
        _two_histograms(ax, anomaly["histograms"], (("normal", GOOD_COLOR), ("anomaly", BAD_COLOR)))
        # Each model's own measure, as the uncertainty histograms name it.
        ax.set_xlabel(f"anomaly score: uncertainty ({model['uncertainty_source']})", fontsize=8)
        ax.set_title(
            f"{model['name']}: AP {_fmt(anomaly['ap'])}, AUROC {_fmt(anomaly['auroc'])}", fontsize=9
        )
    figure.suptitle(f"Pixel anomaly detection ({with_anomaly[0]['anomaly']['split']})")
    return figure


# Binary accuracy map values (Holder Fig. 2, DUDES Fig. 3: white = wrong). Void pixels are
# grey rather than white so that white means only "wrong".
ACCURACY_WRONG, ACCURACY_RIGHT, ACCURACY_VOID = 255, 0, 128


def accuracy_map(
    pred: np.ndarray, label: np.ndarray, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Class ids and label [H, W] -> uint8 [H, W]: 255 wrong, 0 right, 128 ignore."""
    out = np.where(pred != label, ACCURACY_WRONG, ACCURACY_RIGHT).astype(np.uint8)
    out[label == ignore_index] = ACCURACY_VOID
    return out


# Columns of the class legend under the label / prediction panels of a sample figure.
LEGEND_CLASS_COLUMNS = 6


def class_legend(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    palette: np.ndarray,
    ignore_index: int,
) -> list[Patch]:
    """Legend patches of the classes that labels or predictions (class ids of any shape)
    show, by id, then "void / ignore" (drawn black) when labels have ignored pixels."""
    shown = np.union1d(np.unique(labels[labels != ignore_index]), np.unique(predictions))
    patches = [
        Patch(facecolor=palette[c] / 255.0, edgecolor="0.5", label=class_names[c])
        for c in shown.astype(np.int64)
    ]
    if np.any(labels == ignore_index):
        patches.append(Patch(facecolor="black", edgecolor="0.5", label="void / ignore"))
    return patches


def sample_predictions(
    names: Sequence[str],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    uncertainty: Sequence[np.ndarray],
    *,
    title: str,
    uncertainty_source: str,
    class_names: Sequence[str],
    vmax: float = UNCERTAINTY_VMAX,
    ignore_index: int = IGNORE_INDEX,
    palette: np.ndarray = TRAIN_ID_COLORS,
) -> Figure:
    """Rows of image | ground truth | prediction | accuracy | uncertainty (Holder Fig. 2,
    DUDES Fig. 3). K rows, row k: images[k] [H_k, W_k, 3] uint8; labels[k], predictions[k]
    [H_k, W_k] class ids; uncertainty[k] [H_k, W_k] in the model's measure
    `uncertainty_source` (stacked [K, H, W, ...] arrays will do when the sizes agree).

    Each row is drawn at its own size and aspect (your own photos come in several): the
    panels are as tall as the tallest image asks (at the panel width), and an image of a
    wider aspect is centred in its panel.

    Every uncertainty map of every model is drawn on one fixed scale, 0 to `vmax` (that of
    `segdistill predict`'s heat maps; larger values saturate), so a hotter map is a more
    uncertain model: a scale per model (to its own maximum) would make every model look
    equally hot. Under the panels: a legend of the classes shown (class_names [C], palette
    [C, 3] uint8) and the colour bar, labelled with the measure and the scale."""
    count = len(labels)
    panel = 2.2
    aspect = max(label.shape[0] / label.shape[1] for label in labels)
    legend = class_legend(
        np.concatenate([np.ravel(label) for label in labels]),
        np.concatenate([np.ravel(pred) for pred in predictions]),
        class_names,
        palette,
        ignore_index,
    )
    legend_rows = -(-len(legend) // LEGEND_CLASS_COLUMNS)
    figure, flat = axes_grid(
        5 * count,
        5,
        (panel, panel * aspect),
        left=0.35,
        right=0.25,
        bottom=max(0.95, 0.2 + 0.2 * legend_rows),
        top=0.6,
        wgap=0.08,
        hgap=0.3,
        dpi=SAMPLE_DPI,
    )
    axes = np.array(flat).reshape(count, 5)
    columns = ("image", "ground truth", "prediction", "accuracy (white = wrong)", "uncertainty")
    for r in range(count):
        label = labels[r].astype(np.int64)
        panels = (
            images[r],
            colorize(np.where(label == ignore_index, 255, label).astype(np.uint8), palette),
            colorize(predictions[r].astype(np.uint8), palette),
            np.repeat(accuracy_map(predictions[r], label, ignore_index)[..., None], 3, axis=-1),
        )
        for c, picture in enumerate(panels):
            axes[r][c].imshow(picture, interpolation="nearest")
        axes[r][4].imshow(uncertainty[r], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        axes[r][0].set_ylabel(_row_label(names[r]), fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, column in enumerate(columns):
        axes[0][c].set_title(column, fontsize=9)
    # Below the last row: the class legend under the label columns, a horizontal colour
    # bar under the uncertainty column (its label fits there however few rows there are).
    inch_y = 1 / figure.get_figheight()  # figure fraction of one inch, vertically
    low = axes[-1][4].get_position()
    figure.legend(
        handles=legend,
        loc="upper left",
        bbox_to_anchor=(axes[-1][1].get_position().x0, low.y0 - 0.08 * inch_y),
        ncol=LEGEND_CLASS_COLUMNS,
        fontsize=7,
        frameon=False,
        borderaxespad=0,
        handlelength=1.2,
        columnspacing=1.0,
    )
    bar = figure.add_axes((low.x0, low.y0 - 0.28 * inch_y, low.width, 0.1 * inch_y))
    scale = ScalarMappable(Normalize(0, vmax), "magma")  # the one scale of every map
    figure.colorbar(scale, cax=bar, orientation="horizontal", extend="max")
    bar.tick_params(labelsize=7)
    bar.set_xlabel(
        f"uncertainty: {uncertainty_source}\nfixed scale 0 to {vmax:g}, higher saturates",
        fontsize=7,
    )
    figure.suptitle(title, fontsize=11)
    return figure


# The longest row label of a sample figure kept on one line: it fits beside a row.
ROW_LABEL_CHARS = 12


def _row_label(name: str) -> str:
    """A sample figure's row label: a long image stem ("city_000000_000019") broken at its
    first underscore to fit beside the row; a set's name ("fog_0.02") kept whole."""
    return name if len(name) <= ROW_LABEL_CHARS else name.replace("_", "\n", 1)


def _draw(
    entries: Sequence[tuple[str, Callable[[], Figure | None]]],
) -> Iterator[tuple[str, Figure]]:
    """Draw lazily, one figure alive at a time; skip the ones with nothing to show."""
    for name, draw in entries:
        figure = draw()
        if figure is not None:
            yield name, figure


def model_figures(
    models: Sequence[Model], slots: Sequence[int] | None = None
) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of one model's figures; `models` is [model] or [teacher,
    model], the teacher's curves drawn beside the model's; slots: their colours, their
    places among the models of the comparison figures (`_slots`)."""
    subject = models[-1]
    return _draw(
        [
            ("reliability", lambda: reliability_diagram(models, slots=slots)),
            ("misclassification_roc", lambda: misclassification_roc(models, slots=slots)),
            ("uncertainty_histograms", lambda: uncertainty_histograms(models)),
            ("miou_vs_removed", lambda: miou_vs_removed(models, slots=slots)),
            ("iou_after_removal", lambda: iou_after_removal(models, slots=slots)),
            ("per_class_uncertainty", lambda: per_class_uncertainty(models, slots=slots)),
            ("teacher_student_hist2d", lambda: teacher_student_hist2d([subject])),
            ("ood_roc", lambda: ood_roc_curves(subject)),
            ("ood_scores", lambda: ood_score_distributions(subject)),
            ("anomaly_histograms", lambda: anomaly_histograms(models)),
        ]
    )


def comparison_figures(models: Sequence[Model]) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) of the figures comparing all models."""
    return _draw(
        [
            ("reliability", lambda: reliability_diagram(models)),
            ("misclassification_roc", lambda: misclassification_roc(models)),
            ("uncertainty_histograms", lambda: uncertainty_histograms(models)),
            ("miou_vs_removed", lambda: miou_vs_removed(models)),
            ("iou_after_removal", lambda: iou_after_removal(models)),
            ("miou_per_split", lambda: miou_per_split(models)),
            ("per_class_uncertainty", lambda: per_class_uncertainty(models)),
            ("teacher_student_hist2d", lambda: teacher_student_hist2d(models)),
            ("ood_auroc", lambda: ood_auroc_bars(models)),
            ("anomaly_histograms", lambda: anomaly_histograms(models)),
        ]
    )
