"""`segdistill predict`: segmentation, uncertainty and accuracy pictures for image files.

    segdistill predict SOURCE INPUT... --out DIR [--labels DIR_OR_FILE] [--batch-size N]
                       [--size HxW] [--vmax V] [--device auto|cpu|cuda] [--channels-last]
                       [--mc-samples K]

SOURCE is a run directory, a .safetensors weights file, or an ensemble directory (or its
manifest.json). INPUT is image files and folders (searched with their sub-folders; a
folder of video frames works the same). What is written, the input rules and the label
naming are described in `segdistill.predict` and docs/deployment.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from segdistill.bench import resolve_device
from segdistill.commands.arguments import MODEL_SOURCE_HELP, add_channels_last, add_mc_samples
from segdistill.commands.data import parse_size
from segdistill.predict import UNCERTAINTY_VMAX, find_images, predict_files
from segdistill.predictor import load_predictor


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
        help="image files (.png, .jpg) or folders of them (e.g. video frames)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="DIR_OR_FILE",
        help="label folder (Cityscapes gtFine naming or the image's stem) or one label file; "
        "adds the binary accuracy map",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (1)")
    parser.add_argument(
        "--size",
        type=parse_size,
        metavar="HxW",
        help="resize images to HxW for the network (outputs keep the image size); default: "
        "full size, padded to a multiple of 32",
    )
    parser.add_argument(
        "--vmax",
        type=float,
        default=UNCERTAINTY_VMAX,
        help="top of the fixed heat-map colour scale 0..vmax (default %(default)s, the "
        "largest possible pred_std)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="default: cuda when available, else cpu",
    )
    add_channels_last(parser)
    add_mc_samples(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    images = find_images(args.inputs, exclude=args.out)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = resolve_device(args.device)
    predictor = load_predictor(args.source, mc_samples=args.mc_samples)
    predictor.to(device, channels_last=args.channels_last)
    summary = predict_files(
        predictor,
        images,
        args.out,
        labels=args.labels,
        batch_size=args.batch_size,
        size=args.size,
        vmax=args.vmax,
    )
    print(
        f"{predictor.name} ({predictor.kind}, uncertainty: {predictor.uncertainty_source}): "
        f"wrote {summary.images} images, {summary.labelled} with a label, to {args.out}; "
        f"index in {summary.summary}"
    )
    if summary.notices:
        print(f"{len(summary.notices)} notice(s), listed above")
    return 0
