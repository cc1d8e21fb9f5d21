"""Contact sheets of a data set (`segdistill data preview`), so that a wrong label
mapping, a shifted mask or a broken shifted copy shows at a glance.

`synth_contact_sheet`: per SynthStreets scene the image, coloured labels, depth and every
shifted copy. `own_contact_sheet`: per sample of a Cityscapes-layout or folder data set
(`survey.OwnDataSet`) the image, its mask in the data set's colours and the two overlaid,
with a legend of the classes shown. `draw_sheet` draws either (matplotlib, Agg).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdistill.data import shifts
from segdistill.data.labels import CLASS_NAMES, IGNORE_INDEX, TRAIN_ID_COLORS, colorize
from segdistill.data.synthstreets import (
    META_FILE,
    SPLITS,
    SamplePaths,
    decode_depth,
    not_a_data_set,
    read_meta,
    read_png,
    shift_root,
)
from segdistill.errors import DataError

if TYPE_CHECKING:
    from matplotlib.patches import Patch

    from segdistill.data.survey import OwnDataSet


def _depth_view(depth: np.ndarray) -> np.ndarray:
    """[H, W] metres -> [H, W] in [0, 1] (log scale, near bright; the sky 0)."""
    finite = np.isfinite(depth)
    scaled = np.zeros(depth.shape, np.float32)
    scaled[finite] = 1.0 - np.clip(np.log(np.maximum(depth[finite], 1.0)) / np.log(500.0), 0, 1)
    return scaled


def _anomaly_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[H, W, 3] image with anomaly pixels tinted red."""
    out = image.astype(np.float32)
    out[mask == shifts.ANOMALY] = 0.4 * out[mask == shifts.ANOMALY] + (153, 0, 0)
    return out.astype(np.uint8)


def _scene_panels(
    root: Path, meta: dict, split: str, image: Path
) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """(title, array) panels of one scene: image, labels, depth, then each shifted copy;
    and its train ids [H, W] (for the sheet's class legend)."""
    stem = image.name.removesuffix("_leftImg8bit.png")
    paths = SamplePaths.of(root, split, image.parent.name, stem)
    height, width = meta["size"]

    def read(path: Path) -> np.ndarray:
        # A file of another size would be drawn stretched to its panel, unnoticed.
        array = read_png(path)
        if array.shape[:2] != (height, width):
            raise DataError(
                f"{path} is {array.shape[1]}x{array.shape[0]} (WxH) but the data set's images "
                f"are {width}x{height} ({META_FILE}); `segdistill data info {root}` lists "
                "every such file"
            )
        return array

    train_ids = read(paths.train_ids)
    panels: list[tuple[str, np.ndarray]] = [
        ("image", read(paths.image)),
        ("labels", colorize(train_ids)),
        ("depth (log; near bright, sky black)", _depth_view(decode_depth(read(paths.depth)))),
    ]
    for name, info in meta["shifts"].items():
        if info["split"] != split:
            continue
        shifted = SamplePaths.of(shift_root(root, name), split, image.parent.name, stem)
        picture = read(shifted.image)
        if info["kind"] == "anomaly":
            picture = _anomaly_view(picture, read(shifted.anomaly))
            name = "anomaly (red)"
        panels.append((name, picture))
    return panels, train_ids


def _preview_images(
    root: Path, meta: dict, scenes: int, split: str | None
) -> tuple[str, list[Path]]:
    """(split, `scenes` images spread over it): `split`, else the test split when it has
    images (it has the shifted copies), else the first split that has."""
    for name in (split,) if split else ("test", *SPLITS):
        images = sorted((root / "leftImg8bit" / name).glob("*/*_leftImg8bit.png"))
        if images and meta["splits"].get(name, {}).get("images"):
            return name, [images[i] for i in spread(len(images), scenes)]
    raise DataError(f"{root}: no images to preview" + (f" in split {split!r}" if split else ""))


def spread(count: int, rows: int) -> list[int]:
    """Up to `rows` indices spread evenly over 0..count-1, the first and the last included."""
    rows = min(rows, count)
    return sorted({round(i * (count - 1) / max(rows - 1, 1)) for i in range(rows)})


def synth_contact_sheet(root: Path, out: Path, scenes: int, split: str | None = None) -> int:
    """Draw `scenes` rows of a SynthStreets data set's panels into `out`. Returns the rows."""
    meta = read_meta(root)
    if meta is None:
        raise not_a_data_set(root)
    from segdistill.figures import class_legend

    split, images = _preview_images(root, meta, scenes, split)
    rows, train_ids = zip(*(_scene_panels(root, meta, split, image) for image in images))
    labels = ["{} {}".format(*image.name.split("_")[:2]) for image in images]
    title = f"SynthStreets {meta['version']}: {root} ({split})"
    # The classes the label panels show, as the preview of other data sets has them.
    shown = np.concatenate([ids.ravel() for ids in train_ids])
    legend = class_legend(shown, np.empty(0, np.int64), CLASS_NAMES, TRAIN_ID_COLORS, IGNORE_INDEX)
    draw_sheet(list(rows), labels, title, out, legend)
    return len(rows)


def _preview_split(data: OwnDataSet, split: str) -> str:
    """`split` when it is one of `data`'s splits; else DataError naming the folder that
    holds no images, or the splits there are."""
    if split in data.splits:
        return split
    empty = next((folder for folder in data.skipped if folder.name == split), None)
    if empty is not None:
        raise DataError(
            f"{empty}: split {split!r} holds no images (expected {data.root}/{data.layout}); "
            f"splits with images: {', '.join(data.splits)}"
        )
    raise DataError(f"{data.root}: no split {split!r}; it has {data.splits}")


def own_contact_sheet(data: OwnDataSet, out: Path, scenes: int, split: str | None = None) -> int:
    """Draw `scenes` labelled samples of a Cityscapes-layout or folder data set (image, mask,
    overlay) into `out`, spread over `split`, with a legend of the classes they show.
    Without `split`: val, else train, else the other splits in order, passing over a split
    that cannot be opened, has no mask, or whose masks drawn show no class (all void, as
    Cityscapes' test masks). Returns the rows drawn."""
    from segdistill.figures import class_legend

    # Only the split drawn is opened, so that a bad other split does not stop the preview.
    names = (
        [_preview_split(data, split)]
        if split
        else sorted(data.splits, key=lambda name: (name != "val", name != "train", name))
    )
    passed: list[str] = []  # why each split before the one drawn was passed over
    for name in names:
        try:
            dataset = data.open(name)
        except DataError as error:
            if split:
                raise
            passed.append(f"split {name}: {error}")
            continue
        labelled = [i for i, files in enumerate(dataset.samples) if files.label is not None]
        samples = [dataset.load(labelled[i]) for i in spread(len(labelled), scenes)]
        reason = None
        if not samples:
            reason = f"split {name}: none of its {len(dataset)} images has a mask"
        elif all(np.all(sample["label"] == dataset.ignore_index) for sample in samples):
            reason = f"split {name}: the {len(samples)} masks drawn show no class (all void)"
        if reason is None or (split and samples):  # a split asked for is drawn even so
            if reason is not None:
                print(f"note: {reason}", file=sys.stderr)
            break
        passed.append(reason)
    else:
        raise DataError(f"{data.root}: nothing to preview; " + "; ".join(passed))
    for reason in passed:
        print(f"note: preview passes over {reason}", file=sys.stderr)
    rows, labels = [], []
    for sample in samples:
        image, label = sample["image"], sample["label"]
        colours = colorize(label, dataset.colors)
        valid = (label < dataset.num_classes)[..., None]
        overlay = np.where(valid, image // 2 + colours // 2, image)
        rows.append([("image", image), ("mask", colours), ("overlay", overlay)])
        labels.append(sample["name"])
    legend = class_legend(
        np.concatenate([sample["label"].ravel() for sample in samples]),
        np.empty(0, np.int64),  # no predictions: the classes of the masks alone
        dataset.classes,
        dataset.colors,
        dataset.ignore_index,
    )
    title = f"{data.root}: {data.kind}, split {name}, {len(rows)} of {len(dataset)} images"
    draw_sheet(rows, labels, title, out, legend)
    return len(rows)


def draw_sheet(
    rows: list[list[tuple[str, np.ndarray]]],
    row_labels: list[str],
    title: str,
    out: Path,
    legend: list[Patch] | None = None,
) -> None:
    """Rows of (title, picture) panels into a PNG (matplotlib, Agg), written atomically.
    A picture is [H, W, 3] uint8 or [H, W] in [0, 1] (magma); legend: patches drawn under
    the panels (`figures.class_legend`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segdistill.figures import LEGEND_CLASS_COLUMNS, save

    height, width = rows[0][0][1].shape[:2]
    cols = max(len(panels) for panels in rows)
    panel_w = 2.6
    legend_h = 0.0 if not legend else 0.22 * (1 + len(legend) // LEGEND_CLASS_COLUMNS)
    # Constrained layout leaves room for each row's label and the legend below the panels.
    figure = Figure(
        figsize=(panel_w * cols, (panel_w * height / width + 0.2) * len(rows) + 0.5 + legend_h),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), cols, squeeze=False)
    for r, (label, panels) in enumerate(zip(row_labels, rows)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.set_axis_off()
                continue
            name, picture = panels[c]
            ax.imshow(picture, cmap="magma" if picture.ndim == 2 else None, vmin=0, vmax=1)
            if r == 0:
                ax.set_title(name, fontsize=9)
        axes[r][0].set_xlabel(label, fontsize=8)  # horizontal: file names are long
    figure.suptitle(title, fontsize=10)
    if legend:
        figure.legend(
            handles=legend,
            loc="outside lower center",
            ncol=LEGEND_CLASS_COLUMNS,
            fontsize=8,
            frameon=False,
        )
    save(figure, out, dpi=100)
