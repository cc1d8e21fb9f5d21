"""`segdistill experiment`: run a whole comparison of one paper from its config.

    segdistill experiment CONFIG [--run-dir DIR] [--set KEY=VALUE ...]

CONFIG is an experiment file (configs/quick/*.yaml, configs/paper/*.yaml; schema in
docs/experiments.md): the teacher, the baseline trained on labels only, the students and
their methods, the ablations, the table and the paper's claims to check. The pipeline
(`segdistill.pipeline`) trains what is missing, evaluates, benchmarks and writes
RUN_DIR/results.json, table.md and report.html. Run it again after an interruption: the
finished steps are skipped. RUN_DIR: --run-dir, else the config's run_dir, else
runs/<config name>. `--set seeds=N` trains the baseline and every student N times (seed +
0..N-1) and compares means. The pipeline (and with it Lightning) is imported when the
command runs (see `commands/train.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segdistill.commands.arguments import add_overrides, output_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a paper's comparison (teacher, baseline, students) end to end",
        description="Train, distil, evaluate and benchmark everything an experiment config "
        "lists, and write its results.json, table and HTML report (resumable).",
    )
    parser.add_argument("config", type=Path, help="experiment YAML, e.g. configs/quick/dudes.yaml")
    add_pipeline_arguments(parser)
    parser.set_defaults(func=run_experiment)


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """--run-dir and --set, shared with `segdistill demo`."""
    parser.add_argument(
        "--run-dir",
        type=output_folder,
        metavar="DIR",
        help="output folder (default: run_dir of the config, else runs/<config name>)",
    )
    add_overrides(parser, "teacher.members=3 evaluate.max_images=20")


def run_experiment_file(config: Path, overrides: list[str], run_dir: Path | None) -> int:
    """Load the experiment and run its pipeline (shared with `segdistill demo`)."""
    from segdistill.pipeline import load_experiment, run_pipeline

    experiment = load_experiment(config, overrides)
    target = run_dir or Path(experiment.spec.run_dir or Path("runs") / experiment.spec.name)
    run_pipeline(experiment, target)
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    return run_experiment_file(args.config, args.overrides, args.run_dir)
