"""`segdistill predict`: segmentation, uncertainty and accuracy pictures for image files.

    segdistill predict SOURCE INPUT... --out DIR [--labels DIR_OR_FILE] [--classes FILE]
                       [--outputs KIND,...] [--distrust-above T] [--batch-size N]
                       [--size HxW] [--vmax V] [--skip-unreadable]
                       [--device DEV] [--channels-last] [--mc-samples K]
                       [--ood-reference PATH... [--ood-fpr F] [--ood-aggregator A]
                        | --ood-detector FILE]

SOURCE is a run directory, a .safetensors weights file, or an ensemble directory (or its
manifest.json). INPUT is image files and folders (searched with their sub-folders, which
the outputs mirror; a folder of video frames works the same). What is written, the input
rules and the label naming are described in `segdistill.predict` and docs/deployment.md.

--ood-reference fits an image-level OOD detector on in-distribution images (e.g. the
validation split), saves it as DIR/ood_detector.json and flags the INPUT images whose
score is above its threshold; --ood-detector reuses a saved one (`segdistill.ood_detector`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segdistill.commands.arguments import (
    MODEL_SOURCE_HELP,
    add_channels_last,
    add_device,
    add_mc_samples,
    non_negative_float,
    output_folder,
    parse_size,
    positive_float,
    positive_int,
    share_below_one,
)
from segdistill.defaults import (
    AGGREGATORS,
    DEFAULT_AGGREGATOR,
    DEFAULT_FPR,
    DETECTOR_FILE,
    OUTPUT_KINDS,
    UNCERTAINTY_VMAX,
)
from segdistill.errors import ConfigError, DataError

if TYPE_CHECKING:
    from segdistill.ood_detector import ImageOODDetector
    from segdistill.predictor import Predictor

# A false-alarm rate rests on the reference images above the threshold: with fewer than
# this many expected there (images x rate), one image more or less moves it a lot.
MIN_REFERENCES_ABOVE = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` command."""
    parser = subparsers.add_parser(
        "predict",
        help="write segmentation, uncertainty and accuracy pictures for images",
        description="Predict classes and uncertainty for image files, folders or folders of "
        "video frames; write colour, overlay, heat-map, 16-bit and panel PNGs per image.",
    )
    parser.add_argument("source", type=Path, help=MODEL_SOURCE_HELP)
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image files (.png, .jpg, .jpeg) or folders of them (e.g. video frames); the outputs "
        "mirror a folder's sub-folders",
    )
    parser.add_argument("--out", type=output_folder, required=True, help="output folder")
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="DIR_OR_FILE",
        help="label folder (Cityscapes gtFine naming or the image's stem) or one label file; "
        "adds the binary accuracy map",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="a folder data set's classes.yaml: its colours draw the classes, its mask "
        "values and ignore value read --labels (default: the classes the weights were "
        "trained on; for weights without them, Cityscapes colours and labels as ids)",
    )
    parser.add_argument(
        "--outputs",
        type=parse_outputs,
        metavar="KIND,...",
        help=f"what to write per image, comma-separated: {', '.join(OUTPUT_KINDS)} (default: "
        "all that apply: accuracy needs --labels, distrust --distrust-above), or none "
        "(predict.json only, e.g. for the OOD flags); the panels take most of the time",
    )
    parser.add_argument(
        "--distrust-above",
        type=non_negative_float,
        metavar="T",
        help="write distrust/NAME.png: white where the uncertainty is >= T (probably wrong); "
        "take T from `segdistill evaluate`'s error_operating_points for the share of errors "
        "it must catch",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per forward (default %(default)s)",
    )
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out an image that cannot be read (a corrupt or truncated frame) with a "
        "notice, listed in predict.json, instead of stopping the run",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="HxW",
        help="resize images to HxW for the network (outputs keep the image size); default: "
        "full size, padded to a multiple of 32 (64 for NfS-Net)",
    )
    parser.add_argument(
        "--vmax",
        type=positive_float,
        metavar="V",
        default=UNCERTAINTY_VMAX,
        help="top of the fixed heat-map colour scale 0..vmax (default %(default)s, the "
        "largest possible pred_std)",
    )
    add_device(parser)
    add_channels_last(parser)
    add_mc_samples(parser)
    ood = parser.add_argument_group(
        "image-level OOD flag",
        "flag the images whose aggregated uncertainty is above what in-distribution images "
        "reach (predict.json: ood_score, ood)",
    )
    source = ood.add_mutually_exclusive_group()
    source.add_argument(
        "--ood-reference",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="in-distribution image files or folders (e.g. the validation images) to fit "
        f"the threshold on; the detector is saved as OUT/{DETECTOR_FILE}",
    )
    source.add_argument(
        "--ood-detector",
        type=Path,
        metavar="FILE",
        help=f"a saved {DETECTOR_FILE} of this model and --size",
    )
    ood.add_argument(
        "--ood-fpr",
        type=share_below_one,
        metavar="F",
        help=f"share of the reference images the threshold may flag, 0 <= F < 1 (default "
        f"{DEFAULT_FPR})",
    )
    ood.add_argument(
        "--ood-aggregator",
        choices=AGGREGATORS,
        help=f"how an image's uncertainty becomes one score (default {DEFAULT_AGGREGATOR}; "
        "`segdistill evaluate` reports which separates best)",
    )
    parser.set_defaults(func=run_predict)


def parse_outputs(text: str) -> list[str]:
    """ "pred,uncertainty16" -> the kinds (argparse type); "none" -> []."""
    kinds = [kind.strip() for kind in text.split(",")]
    from segdistill.predict import check_output_kinds

    if kinds == ["none"]:
        return []
    if "none" in kinds:
        raise argparse.ArgumentTypeError(f"'none' stands alone, not in {text!r}")
    try:
        return check_output_kinds(kinds)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(f"{error}, or none") from None


def _outputs(args: argparse.Namespace) -> list[str]:
    """The kinds to write: --outputs, or every kind the other arguments allow; an asked-for
    kind that cannot be made is an error."""
    needs = {
        "accuracy": ("--labels", args.labels),
        "distrust": ("--distrust-above", args.distrust_above),
    }
    cannot = {kind: option for kind, (option, value) in needs.items() if value is None}
    if args.outputs is None:
        return [kind for kind in OUTPUT_KINDS if kind not in cannot]
    for kind in args.outputs:
        if kind in cannot:
            raise ConfigError(f"--outputs {kind} needs {cannot[kind]}")
    return list(args.outputs)


def _ood_detector(args: argparse.Namespace, predictor: Predictor) -> ImageOODDetector | None:
    """The detector the OOD arguments ask for: fitted on --ood-reference (and saved in the
    output folder), loaded from --ood-detector, or None."""
    from segdistill.ood_detector import ImageOODDetector
    from segdistill.predict import find_images, fit_ood_detector

    if args.ood_reference is None:
        if args.ood_fpr is not None or args.ood_aggregator is not None:
            raise ConfigError(
                "--ood-fpr and --ood-aggregator set how --ood-reference fits a detector: give "
                "--ood-reference (a saved --ood-detector keeps its own)"
            )
        if args.ood_detector is None:
            return None
        detector = ImageOODDetector.load(args.ood_detector)
        detector.check_model(predictor, args.size, where=args.ood_detector)
        return detector
    detector = fit_ood_detector(
        predictor,
        [image.path for image in find_images(args.ood_reference, exclude=args.out)],
        aggregator=args.ood_aggregator or DEFAULT_AGGREGATOR,
        fpr=DEFAULT_FPR if args.ood_fpr is None else args.ood_fpr,
        batch_size=args.batch_size,
        size=args.size,
    )
    detector.save(args.out / DETECTOR_FILE)
    print(
        f"OOD detector: threshold {detector.threshold:.4g} on the {detector.aggregator} "
        f"{detector.scored_map}, at most {detector.fpr * 100:g} % of the "
        f"{detector.reference_images} reference images above it; saved as "
        f"{args.out / DETECTOR_FILE}"
    )
    # A rate of 0 takes the largest reference score: no count of images resolves it better.
    if 0 < detector.fpr and detector.reference_images * detector.fpr < MIN_REFERENCES_ABOVE:
        print(
            f"notice: {detector.reference_images} reference images cannot resolve a "
            f"{detector.fpr * 100:g} % false-alarm rate (fewer than {MIN_REFERENCES_ABOVE} "
            f"would lie above the threshold); use at least "
            f"{math.ceil(MIN_REFERENCES_ABOVE / detector.fpr)} in-distribution images",
            file=sys.stderr,
        )
    return detector


def run_predict(args: argparse.Namespace) -> int:
    from segdistill.data.folder import load_classes
    from segdistill.predict import PRINTED_NOTICES, SUMMARY_FILE, find_images, predict_files
    from segdistill.predictor import check_class_count, default_device, load_predictor

    outputs = _outputs(args)
    # Checked before the OOD detector is fitted, which can take minutes.
    if args.labels is not None and not args.labels.exists():
        raise DataError(f"--labels {args.labels}: no such file or folder")
    images = find_images(args.inputs, exclude=args.out)
    classes = None if args.classes is None else load_classes(args.classes)
    device = default_device(args.device)
    predictor = load_predictor(args.source, mc_samples=args.mc_samples)
    if classes is not None:
        # Here, not only in predict_files: before the OOD detector is fitted (minutes).
        check_class_count(classes, predictor, args.classes)
    predictor.to(device, channels_last=args.channels_last)
    ood = _ood_detector(args, predictor)
    summary = predict_files(
        predictor,
        images,
        args.out,
        labels=args.labels,
        classes=classes,
        batch_size=args.batch_size,
        size=args.size,
        vmax=args.vmax,
        ood=ood,
        distrust_above=args.distrust_above,
        outputs=outputs,
        skip_unreadable=args.skip_unreadable,
    )
    print(
        f"{predictor.name} ({predictor.kind}, uncertainty: {predictor.uncertainty_source}): "
        f"wrote {summary.images} images, {summary.labelled} with a label, to {args.out}; "
        f"index in {summary.summary}"
    )
    if ood is not None:
        print(
            f"OOD: {summary.flagged} of {summary.images} images flagged as unlike the "
            f"reference images (score above {ood.threshold:.4g}; predict.json: ood)"
        )
    if args.distrust_above is not None and summary.pixels:
        where = " (white in distrust/)" if "distrust" in outputs else ""
        print(
            f"distrust: {summary.distrusted / summary.pixels:.1%} of the pixels have an "
            f"uncertainty >= {args.distrust_above:g}{where}"
        )
    if summary.skipped:
        print(f"{len(summary.skipped)} unreadable image(s) skipped (predict.json: skipped)")
    if summary.notices:
        shown = (
            "listed above"
            if len(summary.notices) <= PRINTED_NOTICES
            else f"the first {PRINTED_NOTICES} printed above"
        )
        print(f"{len(summary.notices)} notice(s), {shown}; all in {SUMMARY_FILE} (notices)")
    return 0
