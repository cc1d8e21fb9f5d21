"""`segdistill distill`: train a student from a teacher (and the labels).

    segdistill distill CONFIG [--set KEY=VALUE ...] [--run-dir DIR] [--resume]
                              [--teacher-cache DIR] [--devices N] [--num-nodes N]

The config's `distill` section names the teacher (an ensemble directory, an MC-dropout
or a single checkpoint) and the methods with their weights; `model` is the student
(architecture and uncertainty head), `data` the images. Training is `segdistill train`'s
(`segdistill.train.train`): the same run directory, checkpoints, logs, --resume and DDP.
What distillation adds happens there too: He et al.'s translator trains before the first
step (stage 1), `distill.init_from` starts the student from a pre-trained one (Holder &
Shafique), `distill.unlabeled_root` adds unlabelled images, and `--teacher-cache DIR`
(`distill.teacher_cache`) reads the output-level teacher signals from a cache (float16;
the variance float32) built on first use (`segdistill.teacher_cache`). Lightning is
imported when the command runs (see `commands/train.py`).
"""

from __future__ import annotations

import argparse

from segdistill.commands.arguments import output_folder
from segdistill.commands.train import (
    add_resume,
    add_run_arguments,
    load_run_config,
    train_and_report,
)
from segdistill.config import replace_values
from segdistill.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher (ensemble, MC dropout or one network) into a student",
        description="Train a student from the teacher and methods of the config's distill "
        "section into a run directory (see docs/methods.md).",
    )
    add_run_arguments(parser)
    add_resume(parser)
    parser.add_argument(
        "--teacher-cache",
        type=output_folder,
        metavar="DIR",
        help="read the teacher's per-pixel outputs from this cache folder, built on first "
        "use (sets distill.teacher_cache)",
    )
    parser.set_defaults(func=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    if cfg.distill is None:
        raise ConfigError(
            f"{args.config}: no distill section; `segdistill distill` needs distill.teacher "
            "and distill.methods (docs/methods.md); `segdistill train` trains without a teacher"
        )
    if args.teacher_cache is not None:
        cache = str(args.teacher_cache)
        cfg = replace_values(cfg, {"distill.teacher_cache": cache}, "--teacher-cache")
    return train_and_report(cfg, args.resume)
