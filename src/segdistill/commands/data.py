"""`segdistill data`: make, check and look at data sets.

    segdistill data synth --out DIR [--size HxW --train N --val N --test N --seed S
                                     --shifts fog,rain,night,newcity,anomaly
                                     --object-scale F --crowd F --workers K --force]
    segdistill data info DIR
    segdistill data preview DIR --out sheet.png [--scenes N] [--split S]

`synth` writes a SynthStreets data set (see `segdistill.data.synthstreets`); run again with
the same parameters it does nothing ("already there"); a folder holding a different data set
is refused unless --force. `info` checks every file against meta.json and prints counts,
class frequencies and interior shares; it lists every bad file and exits 1. So it does for
a Cityscapes-layout or folder data set, whose unusable files include an image without a
mask in a split where other images have one.
`preview` draws a contact sheet: per SynthStreets scene the image, coloured labels, depth
and every shifted copy; per sample of a Cityscapes-layout or folder data set the image, its
mask in the data set's colours and the two overlaid, with a legend of the classes shown, so
that a wrong `mask_values` entry or a shifted mask shows at a glance. Its default split is
val, else train, else another one whose masks show a class (Cityscapes' test masks are all
void).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdistill.commands.arguments import (
    non_negative_int,
    output_file,
    output_folder,
    parse_size,
    positive_int,
)
from segdistill.data import shifts
from segdistill.data.labels import CLASS_NAMES, IGNORE_INDEX, colorize
from segdistill.data.synthstreets import (
    INTERIOR_RADIUS,
    META_FILE,
    NOT_SYNTHSTREETS,
    PARTIAL_FILE,
    SPLITS,
    GroupReport,
    SamplePaths,
    SynthConfig,
    check_dataset,
    decode_depth,
    generate,
    read_meta,
    read_png,
    shift_root,
)
from segdistill.errors import DataError

if TYPE_CHECKING:  # they import torch, which `--help` does not wait for (cli.py)
    from matplotlib.patches import Patch

    from segdistill.data.base import SegmentationDataset
    from segdistill.data.survey import Survey

DEFAULTS = SynthConfig()


def parse_shifts(text: str) -> tuple[str, ...]:
    """ "fog,rain" -> ("fog", "rain"); "" or "none" -> no shifts."""
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    if kinds == ("none",):
        return ()
    try:
        shifts.expand_shifts(kinds)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return kinds


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group and its sub-commands."""
    parser = subparsers.add_parser("data", help="make, check and preview data sets")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = commands.add_parser("synth", help="generate SynthStreets (Cityscapes layout)")
    synth.add_argument("--out", type=output_folder, required=True, help="output folder")
    synth.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULTS.size,
        metavar="HxW",
        help=f"image size (default {DEFAULTS.size[0]}x{DEFAULTS.size[1]}; up to 1024x2048; "
        "1:2 like Cityscapes)",
    )
    for split in SPLITS:
        synth.add_argument(
            f"--{split}",
            type=non_negative_int,
            default=DEFAULTS.count(split),
            metavar="N",
            help=f"{split} images (default %(default)s)",
        )
    synth.add_argument("--seed", type=int, default=DEFAULTS.seed, help="default %(default)s")
    synth.add_argument(
        "--shifts",
        type=parse_shifts,
        default=DEFAULTS.shifts,
        metavar="LIST",
        help=f"shifted test copies, comma separated, or none (default {','.join(DEFAULTS.shifts)})",
    )
    synth.add_argument(
        "--object-scale",
        type=float,
        default=DEFAULTS.object_scale,
        metavar="S",
        help="drawing size of poles, signs, lights, fences, people and two-wheelers relative "
        "to life size (default %(default)s; the quick configs use 2.5 so small networks "
        "resolve them at 128x256)",
    )
    synth.add_argument(
        "--crowd",
        type=float,
        default=DEFAULTS.crowd,
        metavar="F",
        help="multiplies how often the rare classes occur (default %(default)s = the "
        "Cityscapes-like imbalance; the quick configs use 2)",
    )
    synth.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="K",
        help="worker processes (default: all cores; the files do not depend on it)",
    )
    synth.add_argument("--force", action="store_true", help="replace a different data set in --out")
    synth.set_defaults(func=run_synth)

    info = commands.add_parser(
        "info",
        help="check a data set file by file and print its class statistics",
        description="Decode every image and mask of a SynthStreets, Cityscapes-layout or "
        "folder data set; print the class pixel frequencies per split and every file that "
        "cannot be used, an image without a mask in a split where other images have one "
        "included (exit status 1 then); a split without any mask is unlabelled, not an "
        "error.",
    )
    info.add_argument("dir", type=Path, help="data set folder")
    info.set_defaults(func=run_info)

    preview = commands.add_parser(
        "preview",
        help="draw a contact sheet of images and their masks (and SynthStreets' shifts)",
        description="Draw a contact sheet: per sample of a SynthStreets data set the image, "
        "labels, depth and every shifted copy; of a Cityscapes-layout or folder data set the "
        "image, its mask in the data set's colours and both overlaid, with a class legend.",
    )
    preview.add_argument("dir", type=Path, help="data set folder")
    preview.add_argument("--out", type=output_file, required=True, help="PNG file to write")
    preview.add_argument(
        "--scenes", type=positive_int, default=4, help="rows (default %(default)s)"
    )
    preview.add_argument(
        "--split",
        help="split to draw from (default: SynthStreets' test split, which has the shifted "
        "copies; otherwise val, else train, else the first other split whose masks show a "
        "class); rows are spread over the split",
    )
    preview.set_defaults(func=run_preview)


def run_synth(args: argparse.Namespace) -> int:
    config = SynthConfig(
        size=args.size,
        train=args.train,
        val=args.val,
        test=args.test,
        seed=args.seed,
        shifts=args.shifts,
        object_scale=args.object_scale,
        crowd=args.crowd,
    )
    start = time.perf_counter()
    if not generate(args.out, config, workers=args.workers, force=args.force):
        print(f"{args.out}: already there (same SynthStreets parameters), nothing to do")
        return 0
    images = sum(config.count(split) for split in SPLITS)
    copies = len(config.shift_specs())
    print(
        f"wrote {images} images and {copies} shifted copies of the test split to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _percent(count: int, total: int) -> str:
    return f"{100.0 * count / max(total, 1):6.2f}"


def per_image_report(
    reports: Sequence[GroupReport | Survey], ignore_index: int = IGNORE_INDEX
) -> GroupReport | Survey:
    """The group whose per-image columns `format_class_table` shows: the first with a pixel
    of a class, train before val before the others (Cityscapes' test masks are all void,
    and alphabetically test comes first)."""

    def rank(report: GroupReport | Survey) -> tuple[bool, bool, bool]:
        void_only = report.class_pixels.sum() == report.class_pixels[ignore_index]
        return bool(void_only), report.name != "train", report.name != "val"

    return min(reports, key=rank)


def format_class_table(
    reports: Sequence[GroupReport | Survey],
    names: Sequence[str] = CLASS_NAMES,
    ignore_index: int = IGNORE_INDEX,
) -> str:
    """Class pixel frequencies (% of all pixels) per group and, for the `per_image_report`
    group (named in the column heads), the share of images each class occurs in and
    (SynthStreets) the share of its pixels at least `INTERIOR_RADIUS` pixels from any
    other class, as an aligned text table. The reports count pixels by class id,
    `ignore_index` for void."""
    first = per_image_report(reports, ignore_index)
    interior = first.class_interior if isinstance(first, GroupReport) else None
    width = max(14, *(len(name) + 2 for name in names))
    head = f"{'class':<{width}}" + "".join(f"{r.name:>11}" for r in reports)
    head += f"{'images (' + first.name + ')':>18}"
    head += f"{'interior (' + first.name + ')':>20}" if interior is not None else ""
    lines = [head, "-" * len(head)]
    ids = [*range(len(names)), ignore_index]
    for class_id, name in zip(ids, [*names, "void"]):
        row = f"{name:<{width}}" + "".join(
            f"{_percent(int(r.class_pixels[class_id]), int(r.class_pixels.sum())):>11}"
            for r in reports
        )
        row += f"{_percent(int(first.class_images[class_id]), first.images):>17}%"
        if interior is not None:
            inside = int(interior[class_id])
            row += f"{_percent(inside, int(first.class_pixels[class_id])):>19}%"
        lines.append(row)
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    own = _own_data_set(args.dir)
    if own is not None:
        return _info_of_own_data(own)
    problems: list[str] = []
    meta, reports = check_dataset(args.dir, progress=True, problems=problems)
    height, width = meta["size"]
    print(f"{args.dir}: SynthStreets {meta['version']}, seed {meta['seed']}, {height}x{width}")
    for report in reports:
        print(f"  {report.name:<10} {report.split:<5} {report.images:>6} images  {report.root}")
    # Photometric copies share the test labels; tabulate the splits and re-rendered copies.
    distinct = [r for r in reports if r.images and r.kind not in shifts.PHOTOMETRIC_KINDS]
    if distinct:
        print("\nclass pixel frequencies (%):")
        print(format_class_table(distinct))
        print(
            f"interior: share of a class's pixels at least {INTERIOR_RADIUS} pixels from "
            "any other class (the rest lie on boundaries)"
        )
    total = sum(report.images for report in reports)
    return _integrity(
        problems,
        f"OK ({total} images and their label, instance and depth files)",
        f"{len(problems)} problem(s) in {total} images",
    )


def _integrity(problems: list[str], ok: str, bad: str) -> int:
    """Print the integrity verdict `ok`, or `bad` and every problem; the exit status."""
    if not problems:
        print(f"\nintegrity: {ok}")
        return 0
    print(f"\nintegrity: {bad}:")
    for problem in problems:
        print(f"  {problem}")
    return 1


@dataclass(frozen=True)
class OwnDataSet:
    """A Cityscapes-layout or folder data set that is not SynthStreets.

    layout: where a split's images lie, below `root`; splits: the split folders holding
    images; skipped: the folders where splits lie that hold none (`__MACOSX`, an empty
    folder); open: a split's data set, images without a mask kept (to be counted). Splits
    are opened one at a time, so that a bad split stops only what reads it.
    masks_without_image: the masks of the skipped folders' splits (a folder data set's
    `masks/` beside an `images/` without images, e.g. all .tif).
    """

    root: Path
    kind: str
    layout: str
    splits: list[str]
    skipped: list[Path]
    open: Callable[[str], SegmentationDataset]
    masks_without_image: list[Path] = field(default_factory=list)


def _own_data_set(root: Path) -> OwnDataSet | None:
    """The Cityscapes-layout or folder data set at `root` (no meta.json); None for
    SynthStreets or anything else. DataError when no split folder holds images."""
    from segdistill.data.cityscapes import CityscapesDataset, image_location, split_folders
    from segdistill.data.folder import (
        CLASSES_FILE,
        IMAGES_DIR,
        MASKS_DIR,
        FolderDataset,
        folder_splits,
        images_below,
        is_folder_data_set,
        masks_below,
    )

    if (root / META_FILE).exists() or (root / PARTIAL_FILE).exists():
        return None
    if is_folder_data_set(root):
        holding = {root / split / IMAGES_DIR: split for split in folder_splits(root)}
        empty = [folder for folder in holding if not images_below(folder)]
        data = OwnDataSet(
            root,
            f"folder data set ({CLASSES_FILE})",
            f"<split>/{IMAGES_DIR}/",
            [split for folder, split in holding.items() if folder not in empty],
            empty,
            lambda split: FolderDataset.split(root, split, allow_unlabeled=True),
            [path for folder in empty for _, path in masks_below(folder.parent / MASKS_DIR)],
        )
    elif (root / "leftImg8bit").is_dir():
        splits = split_folders(root)
        folders = sorted(d for d in (root / "leftImg8bit").iterdir() if d.is_dir())
        data = OwnDataSet(
            root,
            "Cityscapes layout",
            f"leftImg8bit/<split>/<city>/{image_location('clean')[1]}",
            splits,
            [folder for folder in folders if folder.name not in splits],
            lambda split: CityscapesDataset(root, split, allow_unlabeled=True),
        )
    else:
        return None
    if not data.splits:
        skipped = f" ({', '.join(map(str, data.skipped))} hold none)" if data.skipped else ""
        raise DataError(
            f"{root}: {data.kind} without any split folder holding images: expected "
            f"{root}/{data.layout}{skipped}"
        )
    return data


def _info_of_own_data(data: OwnDataSet) -> int:
    """`data info` of a Cityscapes-layout or folder data set: every file decoded, the class
    statistics, and every file that cannot be used (exit status 1 if any)."""
    from segdistill.data.survey import survey

    datasets = {split: data.open(split) for split in data.splits}
    first = next(iter(datasets.values()))
    print(
        f"{data.root}: {data.kind}, {first.num_classes} classes, ignore value {first.ignore_index}"
    )
    surveys = [survey(dataset, split) for split, dataset in datasets.items()]
    for found in surveys:
        if not found.masks:
            unlabeled = ", none with a mask (unlabelled: no class statistics)"
        elif found.unlabeled:
            unlabeled = f", {found.unlabeled} without a mask (listed below)"
        else:
            unlabeled = ""
        print(f"  {found.name:<10} {found.images:>6} images{unlabeled}")
    for folder in data.skipped:
        print(f"  note: skipped {folder}: no images ({data.layout})")
    labelled = [s for s in surveys if s.masks]
    if labelled:
        print("\nclass pixel frequencies (%):")
        print(format_class_table(labelled, first.classes, first.ignore_index))
        shown = per_image_report(labelled, first.ignore_index).name
        print(f"images ({shown}): the share of the masks of {shown} that show each class")
    problems = [problem for found in surveys for problem in found.problems]
    orphans = [path for found in surveys for path in found.masks_without_image]
    orphans += data.masks_without_image
    total = sum(found.images for found in surveys)
    bad = f"{len(problems)} of {total} images cannot be used"
    if orphans:
        bad += f", {len(orphans)} masks have no image"
    return _integrity(
        problems + [f"{path}: a mask without its image" for path in orphans],
        f"OK ({total} images and their masks, every file decoded)",
        bad,
    )


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


def _scene_panels(root: Path, meta: dict, split: str, image: Path) -> list[tuple[str, np.ndarray]]:
    """(title, array) panels of one scene: image, labels, depth, then each shifted copy."""
    stem = image.name.removesuffix("_leftImg8bit.png")
    paths = SamplePaths.of(root, split, image.parent.name, stem)
    panels: list[tuple[str, np.ndarray]] = [
        ("image", read_png(paths.image)),
        ("labels", colorize(read_png(paths.train_ids))),
        ("depth (log)", _depth_view(decode_depth(read_png(paths.depth)))),
    ]
    for name, info in meta["shifts"].items():
        if info["split"] != split:
            continue
        shifted = SamplePaths.of(shift_root(root, name), split, image.parent.name, stem)
        picture = read_png(shifted.image)
        if info["kind"] == "anomaly":
            picture = _anomaly_view(picture, read_png(shifted.anomaly))
            name = "anomaly (red)"
        panels.append((name, picture))
    return panels


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
        raise DataError(
            f"{root / META_FILE}: not found; run `segdistill data synth` first ({NOT_SYNTHSTREETS})"
        )
    split, images = _preview_images(root, meta, scenes, split)
    rows = [_scene_panels(root, meta, split, image) for image in images]
    labels = ["{} {}".format(*image.name.split("_")[:2]) for image in images]
    title = f"SynthStreets {meta['version']}: {root} ({split})"
    draw_sheet(rows, labels, title, out)
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

    from segdistill.checkpoints import atomic_write
    from segdistill.figures import LEGEND_CLASS_COLUMNS

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
    image_format = out.suffix.lstrip(".").lower() or "png"
    atomic_write(out, lambda file: figure.savefig(file, format=image_format, dpi=100))


def run_preview(args: argparse.Namespace) -> int:
    own = _own_data_set(args.dir)
    if own is not None:
        rows = own_contact_sheet(own, args.out, args.scenes, args.split)
    else:
        rows = synth_contact_sheet(args.dir, args.out, args.scenes, args.split)
    print(f"wrote {args.out} ({rows} scenes)")
    return 0
