"""`segdistill report`: one self-contained HTML page comparing evaluated models.

    segdistill report RUN_DIR_OR_RESULTS... --out report.html [--title TEXT]

Inputs are run / ensemble directories evaluated by `segdistill evaluate` (their
metrics.json), metrics.json files, or a results.json of `evaluate --out` (or the folder
holding it). Figures are embedded; the file needs nothing else to open. Given one
experiment's results.json (`segdistill experiment`, `segdistill demo`), the page opens with
its table and checks, as the experiment's own report.html does (only then is the pipeline,
and with it Lightning, imported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segdistill.commands.arguments import output_file

if TYPE_CHECKING:
    from segdistill.report import Claims


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
        help="run / ensemble directory with metrics.json, a metrics.json, a results.json, or "
        "the folder holding one",
    )
    parser.add_argument("--out", type=output_file, required=True, help="HTML file to write")
    parser.add_argument("--title", default="segdistill report", help="page title")
    parser.set_defaults(func=run_report)


def _claims(inputs: list[str]) -> Claims | None:
    """The experiment's table and checks when the one input is an experiment's results.json
    (or its run directory); None otherwise (a broken file is reported by write_report)."""
    from segdistill.errors import SegdistillError
    from segdistill.evaluate import SCHEMA_EXPERIMENT
    from segdistill.report import input_file

    if len(inputs) != 1:
        return None
    path = input_file(Path(inputs[0]))
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError, SegdistillError):
        return None
    if not isinstance(content, dict) or content.get("schema") != SCHEMA_EXPERIMENT:
        return None
    from segdistill.pipeline.results import experiment_claims

    try:
        return experiment_claims(content)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        # Written by `segdistill experiment`, whose results always hold these parts.
        raise SegdistillError(
            f"{path} is an experiment's results but cannot be read ({type(error).__name__}: "
            f"{error}): was it edited, or written by another version? Run the experiment "
            "again, or report its models' metrics.json instead"
        ) from None


def run_report(args: argparse.Namespace) -> int:
    from segdistill.report import changed_weights, load_models, write_report

    for line in changed_weights(load_models(args.inputs)):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    path = write_report(args.inputs, args.out, args.title, _claims(args.inputs))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
