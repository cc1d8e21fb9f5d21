"""`segdistill report`: one self-contained HTML page comparing evaluated models.

    segdistill report RUN_DIR_OR_RESULTS... --out report.html [--title TEXT]

Inputs are run / ensemble directories evaluated by `segdistill evaluate` (their
metrics.json), metrics.json files, or a results.json of `evaluate --out` (or the folder
holding it). Figures are embedded; the file needs nothing else to open.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdistill.report import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an HTML report comparing evaluated runs",
        description="Compare evaluated runs in one self-contained HTML page.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_DIR_OR_RESULTS",
        help="run / ensemble directory with metrics.json, a metrics.json, or a results.json",
    )
    parser.add_argument("--out", type=Path, required=True, help="HTML file to write")
    parser.add_argument("--title", default="segdistill report", help="page title")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    path = write_report(args.inputs, args.out, args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
