"""`segdistill export`: one network to ONNX or TorchScript, checked against PyTorch.

    segdistill export SOURCE --format onnx|torchscript [--out FILE] [--opset N]
                      [--outputs probs|labels] [--atol 1e-4] [--classes FILE]

The file computes the class probabilities (or labels) and the uncertainty [B, 1, H, W]
(for a Holder & Shafique student also its OOD map, eq. 8) for any batch size and image
size (`segdistill.export`). The command then runs it
(onnxruntime / torch.jit.load) on a random input of another size than the export sample,
prints the largest difference from PyTorch and "OK", or "FAILED" with exit status 1; a file
that fails the check is not written (a previous file at that place is left as it was).
Ensembles and MC-dropout teachers are refused: export is for single networks.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from segdistill.commands.arguments import output_file, positive_float, positive_int
from segdistill.defaults import EXPORT_ATOL, EXPORT_FORMATS, EXPORT_OUTPUTS

if TYPE_CHECKING:
    from segdistill.export import ExportReport


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` command."""
    parser = subparsers.add_parser(
        "export",
        help="export a student or baseline to ONNX / TorchScript and check it",
        description="Export one network (probabilities or labels, and uncertainty; a Holder "
        "student also its OOD map, eq. 8; dynamic batch, height and width) and compare the "
        "file with PyTorch at another input size; it is written only when it passes.",
    )
    parser.add_argument("source", type=Path, help="run directory or .safetensors weights")
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="file format")
    parser.add_argument(
        "--out",
        type=output_file,
        help="file to write (default: next to the weights, e.g. best.onnx, best.torchscript.pt)",
    )
    parser.add_argument("--opset", type=positive_int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="a classes.yaml whose names and colours the file's description carries "
        "(default: those the weights were trained on; none for weights written without them)",
    )
    parser.add_argument(
        "--outputs",
        choices=EXPORT_OUTPUTS,
        default="probs",
        help="first output: class probabilities [B, C, H, W] or labels [B, H, W] "
        "(default %(default)s); the second is always the uncertainty [B, 1, H, W]",
    )
    parser.add_argument(
        "--atol",
        type=positive_float,
        default=EXPORT_ATOL,
        help="largest allowed difference from PyTorch; beyond it nothing is written "
        "(default %(default)s)",
    )
    parser.set_defaults(func=run_export)


def format_report(report: ExportReport) -> str:
    """What was written (or not, when the check failed), and the check's differences and
    verdict."""
    check = report.check
    fmt = f"ONNX opset {report.opset}" if report.format == "onnx" else "TorchScript"
    shape = "x".join(map(str, check.shape))
    sample = "x".join(map(str, report.sample_shape))
    diffs = ", ".join(
        f"{name} {value:.0f} pixel(s) differ beyond near ties"
        if name == "labels"
        else f"{name} {value:.2e}"
        for name, value in check.max_diff.items()
    )
    ties = (
        f"; {check.near_ties} pixel(s) took another class within the tolerance of the top one"
        if check.near_ties
        else ""
    )
    verdict = "OK" if check.ok else "FAILED"
    what = "wrote" if report.written else "exported (not written: the check below failed)"
    lines = [
        f"{what} {report.path} ({fmt}; outputs {', '.join(report.outputs)}; dynamic batch, "
        f"height, width; traced on {sample})",
        f"check against PyTorch on a random {shape} input: max |difference| {diffs} "
        f"(tolerance {check.atol:g}){ties}: {verdict}",
    ]
    if not report.written:
        lines.append(
            f"{report.path} was left as it was; a larger --atol writes the file if these "
            "differences are acceptable"
        )
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    from segdistill.data.folder import load_classes
    from segdistill.export import export_predictor
    from segdistill.predictor import check_class_count, load_predictor

    predictor = load_predictor(args.source)
    if args.classes is not None:
        classes = load_classes(args.classes)
        check_class_count(classes, predictor, args.classes)
        predictor.classes = classes
    report = export_predictor(
        predictor, args.format, args.out, opset=args.opset, outputs=args.outputs, atol=args.atol
    )
    print(format_report(report))
    return 0 if report.check.ok else 1
