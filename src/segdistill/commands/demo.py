"""`segdistill demo`: from nothing to a report in minutes on a CPU (what `make demo` runs).

    segdistill demo [--members N] [--config FILE] [--run-dir DIR] [--set KEY=VALUE ...]

Runs the experiment configs/quick/demo.yaml (see docs/experiments.md): generate the
SynthStreets quick set into data/synthstreets (if absent), train an N-member ensemble
(default 5; member 0 doubles as the baseline trained on labels only), distil a DUDES and a
Holder & Shafique student, evaluate all on the test set and every shifted set, benchmark
their speed, write runs/demo/results.json and runs/demo/report.html and print the summary
table. Interrupted, it continues where it stopped when run again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdistill.commands.arguments import positive_int
from segdistill.commands.experiment import add_pipeline_arguments, run_experiment_file
from segdistill.errors import ConfigError

DEMO_CONFIG = Path("configs/quick/demo.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, distil, evaluate and report on SynthStreets in minutes (make demo)",
        description="The quick DUDES + Holder & Shafique experiment on SynthStreets, from "
        "data generation to runs/demo/report.html (resumable).",
    )
    parser.add_argument(
        "--members",
        type=positive_int,
        metavar="N",
        help="ensemble members (default: the config's, 5)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEMO_CONFIG,
        metavar="FILE",
        help="the demo's experiment config (default %(default)s, from the repository root)",
    )
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if not args.config.is_file():
        raise ConfigError(
            f"{args.config} not found: run `segdistill demo` from the repository root, or pass "
            "--config configs/quick/demo.yaml with its path"
        )
    overrides = list(args.overrides)
    if args.members is not None:
        overrides.append(f"teacher.members={args.members}")
    return run_experiment_file(args.config, overrides, args.run_dir)
