"""`segdistill evaluate`: accuracy, uncertainty, OOD and anomaly metrics, with figures.

    segdistill evaluate RUN_OR_CHECKPOINT... --data DIR [--splits test,fog_0.02,...]
                        [--batch-size B] [--out DIR] [--num-samples K] [--max-images N]
                        [--mc-samples S] [--device DEV] [--channels-last] [--workers W]
                        [--no-figures]

Each source is a run directory, a .safetensors weights file or an ensemble directory (or
its manifest.json); see `segdistill.predictor` for how each gives its uncertainty. A run
or ensemble directory gets its own metrics.json and figures/; --out DIR gets results.json
with every model and the comparison figures (needed for a loose weights file). The
summary table (on the first split with labelled pixels, "test" first) is printed at the
end. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdistill.commands.arguments import (
    add_channels_last,
    add_device,
    add_mc_samples,
    add_model_sources,
    non_negative_int,
    output_folder,
    positive_int,
)
from segdistill.defaults import RESULTS_FILE


def _split_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no split name in {text!r}")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate models on the test split (val on Foggy / Rain Cityscapes) and its "
        "shifted copies",
        description="Evaluate runs, checkpoints and ensembles: segmentation, uncertainty, "
        "OOD and anomaly metrics; writes metrics.json and figures.",
    )
    add_model_sources(parser, "sources", "RUN_OR_CHECKPOINT")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="data set folder: Cityscapes layout (shifted sets in shifts/<name>/, "
        "leftImg8bit_foggy/, leftImg8bit_rain/), or folder data set (classes.yaml)",
    )
    parser.add_argument(
        "--splits",
        type=_split_list,
        metavar="LIST",
        help="comma-separated splits (default: every shifted set, DIR/shifts/<name>, Foggy "
        "Cityscapes as fog_<beta>, Rain Cityscapes as rain, after the clean splits they are "
        "scored against: test for SynthStreets, val for Foggy / Rain Cityscapes; without "
        "shifted sets test, or val where test's masks are void (Cityscapes) or absent)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4, metavar="B", help="default %(default)s"
    )
    parser.add_argument(
        "--out", type=output_folder, help=f"folder for {RESULTS_FILE} and comparison figures"
    )
    parser.add_argument(
        "--num-samples",
        type=non_negative_int,
        default=3,
        metavar="K",
        help="images of the summary split shown in the sample figures (default %(default)s)",
    )
    parser.add_argument(
        "--max-images",
        type=positive_int,
        metavar="N",
        help="evaluate only the first N images of each split",
    )
    add_mc_samples(parser)
    add_device(parser)
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        metavar="W",
        help="data loader workers (default %(default)s)",
    )
    add_channels_last(parser)
    parser.add_argument("--no-figures", action="store_true", help="write metrics only")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from segdistill.evaluate import evaluate, format_summary

    results = evaluate(
        args.sources,
        args.data,
        args.splits,
        batch_size=args.batch_size,
        out_dir=args.out,
        max_images=args.max_images,
        num_samples=args.num_samples,
        mc_samples=args.mc_samples,
        device=args.device,
        channels_last=args.channels_last,
        num_workers=args.workers,
        make_figures=not args.no_figures,
    )
    print(format_summary(results["models"]))
    print("\nwrote " + ", ".join(results["files"]))
    return 0
