"""`segdistill data`: make, check and look at data sets.

    segdistill data synth --out DIR [--size HxW --train N --val N --test N --seed S
                                     --shifts fog,rain,night,newcity,anomaly
                                     --object-scale F --crowd F --workers K --force]
    segdistill data info DIR
    segdistill data preview DIR --out sheet.png [--scenes N] [--split S]

`synth` writes a SynthStreets data set (see `segdistill.data.synthstreets`); run again with
the same parameters it does nothing ("already there"); a folder holding a different
SynthStreets set is refused unless --force, one holding another data set's folders
(leftImg8bit/, gtFine/ or shifts/ without a meta.json) or other files always.
`info` checks every file against meta.json and prints counts, class frequencies and
interior shares; it lists every bad file and exits 1. So it does for
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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from segdistill.commands.arguments import (
    figure_file,
    non_negative_int,
    output_folder,
    parse_size,
    positive_int,
)
from segdistill.data import shifts
from segdistill.data.labels import CLASS_NAMES, IGNORE_INDEX
from segdistill.data.synthstreets import (
    INTERIOR_RADIUS,
    SPLITS,
    GroupReport,
    SynthConfig,
    check_dataset,
    generate,
)
from segdistill.data.synthstreets.constants import MAX_SIZE, MIN_SIZE
from segdistill.errors import DataError

if TYPE_CHECKING:  # it imports torch, which `--help` does not wait for (cli.py)
    from segdistill.data.survey import OwnDataSet, Survey

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
    synth.add_argument(
        "--out",
        type=output_folder,
        required=True,
        help="output folder: new, empty or a SynthStreets set",
    )
    synth.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULTS.size,
        metavar="HxW",
        help=f"image size (default {DEFAULTS.size[0]}x{DEFAULTS.size[1]}; "
        f"{MIN_SIZE[0]}x{MIN_SIZE[1]} up to {MAX_SIZE[0]}x{MAX_SIZE[1]}; 1:2 like Cityscapes)",
    )
    for split in SPLITS:
        synth.add_argument(
            f"--{split}",
            type=non_negative_int,
            default=DEFAULTS.count(split),
            metavar="N",
            help=f"{split} images (default %(default)s)",
        )
    synth.add_argument(
        "--seed", type=non_negative_int, default=DEFAULTS.seed, help="default %(default)s"
    )
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
        "to life size, 0.5 to 4 (default %(default)s; the quick configs use 2.5 so small "
        "networks resolve them at 128x256)",
    )
    synth.add_argument(
        "--crowd",
        type=float,
        default=DEFAULTS.crowd,
        metavar="F",
        help="multiplies how often the rare classes occur, 0.5 to 4 (default %(default)s = "
        "the Cityscapes-like imbalance; the quick configs use 2)",
    )
    synth.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="K",
        help="worker processes (default: all cores; the files do not depend on it)",
    )
    synth.add_argument(
        "--force",
        action="store_true",
        help="replace a different SynthStreets data set in --out (never other data)",
    )
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
    preview.add_argument(
        "--out",
        type=figure_file,
        required=True,
        help="image file to write: PNG (or .jpg, .svg, .pdf by its suffix)",
    )
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
    if config.shifts and not config.test:
        print(
            f"notice: --shifts {','.join(config.shifts)} copies the test split, and --test 0 "
            "makes none: no shifted copies",
            file=sys.stderr,
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
    # A split's images without a mask (a problem data info lists) show no class.
    labelled = first.images if isinstance(first, GroupReport) else first.masks
    ids = [*range(len(names)), ignore_index]
    for class_id, name in zip(ids, [*names, "void"]):
        row = f"{name:<{width}}" + "".join(
            f"{_percent(int(r.class_pixels[class_id]), int(r.class_pixels.sum())):>11}"
            for r in reports
        )
        row += f"{_percent(int(first.class_images[class_id]), labelled):>17}%"
        if interior is not None:
            inside = int(interior[class_id])
            row += f"{_percent(inside, int(first.class_pixels[class_id])):>19}%"
        lines.append(row)
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from segdistill.data.survey import own_data_set

    own = own_data_set(args.dir)
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


def _info_of_own_data(data: OwnDataSet) -> int:
    """`data info` of a Cityscapes-layout or folder data set: every file decoded, the class
    statistics, and every file that cannot be used (exit status 1 if any)."""
    from segdistill.data.survey import survey

    datasets = {split: data.open(split) for split in data.splits}
    first = next(iter(datasets.values()))
    spec = first.classes_spec
    # Colour masks: the class statistics below count the pixels of each class's colour.
    coding = (
        f", masks in class colors (mask_colors; void colors: {len(spec.void_colors)})"
        if spec.mask_colors
        else ""
    )
    print(
        f"{data.root}: {data.kind}, {first.num_classes} classes, ignore value "
        f"{first.ignore_index}{coding}"
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
        print(f"\nclass pixel frequencies (%{', by mask color' if spec.mask_colors else ''}):")
        print(format_class_table(labelled, first.classes, first.ignore_index))
        shown = per_image_report(labelled, first.ignore_index).name
        print(f"images ({shown}): the share of the masks of {shown} that show each class")
    problems = [problem for found in surveys for problem in found.problems]
    orphans = [path for found in surveys for path in found.masks_without_image]
    orphans += data.masks_without_image
    unread = [path for found in surveys for path in found.unread_masks]
    total = sum(found.images for found in surveys)
    masks = sum(found.masks for found in surveys)
    if not unread and any(found.name == "train" and not found.masks for found in surveys):
        # Cityscapes' gtFine zip not unpacked, or a folder data set's masks/ missing.
        print("\nnote: split train has no masks: training needs them (is gtFine/ or masks/ there?)")
    bad = f"images that cannot be used: {len(problems)} of {total}"
    if orphans:
        bad += f"; masks without an image: {len(orphans)}"
    if unread:
        bad += f"; files in a masks folder not read as masks: {len(unread)}"
    return _integrity(
        problems
        + [f"{path}: a mask without its image" for path in orphans]
        + [
            f"{path}: not read as a mask: masks are lossless PNG files (JPEG changes the "
            "class values at region edges)"
            for path in unread
        ],
        f"OK ({total} images, {masks} with a mask, every file decoded)",
        bad,
    )


def run_preview(args: argparse.Namespace) -> int:
    from segdistill.data.preview import own_contact_sheet, synth_contact_sheet
    from segdistill.data.survey import own_data_set

    own = own_data_set(args.dir)
    if own is not None:
        rows = own_contact_sheet(own, args.out, args.scenes, args.split)
    else:
        rows = synth_contact_sheet(args.dir, args.out, args.scenes, args.split)
    print(f"wrote {args.out} ({rows} scenes)")
    return 0
