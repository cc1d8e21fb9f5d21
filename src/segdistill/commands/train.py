"""`segdistill train` (one network) and `segdistill ensemble` (the members of a deep ensemble).

    segdistill train CONFIG [--set KEY=VALUE ...] [--run-dir DIR] [--resume] [--devices N]
    segdistill ensemble CONFIG --members N [--member I] [--set ...] [--run-dir DIR]

The run directory is --run-dir, else `run.dir` of the config, else runs/<config name>.
The ensemble directory's layout and the parallel members are described in
`segdistill.ensemble`.

Lightning (`segdistill.train`) is imported when a command runs, not when the parser is
built: `segdistill --help` and the commands that do not train start without it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segdistill.commands.arguments import (
    add_overrides,
    non_negative_int,
    output_folder,
    positive_int,
)
from segdistill.config import SegConfig, load_config, replace_values
from segdistill.defaults import RESUME_CHECKPOINT
from segdistill.distributed import is_rank_zero, print_once, slurm_requeued
from segdistill.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmenter, or distil one when the config has a distill section",
        description="Train a segmenter (or distil a teacher into it) into a run directory.",
    )
    add_run_arguments(parser)
    add_resume(parser)
    parser.set_defaults(func=run_train)

    parser = subparsers.add_parser(
        "ensemble",
        help="train the members of a deep ensemble (in parallel with --member)",
        description="Train ensemble members ENSEMBLE_DIR/member_XX and list the finished "
        "ones in ENSEMBLE_DIR/manifest.json.",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--members",
        type=positive_int,
        metavar="N",
        help="number of members (default: ensemble.members of the config)",
    )
    parser.add_argument(
        "--member",
        type=non_negative_int,
        metavar="I",
        help="train only member I (0-based), e.g. one per GPU",
    )
    parser.set_defaults(func=run_ensemble)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the YAML config file")
    add_overrides(parser, "optim.lr=0.02 data.crop_size=[64,128]")
    parser.add_argument(
        "--run-dir",
        type=output_folder,
        metavar="DIR",
        help="output directory (default: run.dir, else runs/NAME)",
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        metavar="N",
        help="GPUs (or CPU processes) per node; > 1: DDP",
    )
    parser.add_argument(
        "--num-nodes", type=positive_int, metavar="N", help="number of nodes (multi-node DDP)"
    )


def add_resume(parser: argparse.ArgumentParser) -> None:
    """--resume of a training run (train, distill)."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run from RUN_DIR/{RESUME_CHECKPOINT} (a requeued SLURM job "
        "continues without it)",
    )


def load_run_config(args: argparse.Namespace) -> SegConfig:
    """The config with --set, --devices and --num-nodes applied and run.dir resolved."""
    overrides = list(args.overrides)
    if args.devices is not None:
        overrides.append(f"trainer.devices={args.devices}")
    if args.num_nodes is not None:
        overrides.append(f"trainer.num_nodes={args.num_nodes}")
    cfg = load_config(args.config, overrides)
    run_dir = args.run_dir or cfg.run.dir or str(Path("runs") / Path(args.config).stem)
    return replace_values(cfg, {"run.dir": str(run_dir)}, "--run-dir")


def run_train(args: argparse.Namespace) -> int:
    return train_and_report(load_run_config(args), args.resume)


def train_and_report(cfg: SegConfig, resume: bool) -> int:
    """Train (or distil) `cfg` and print where the run is, how long it took and its best
    validation mIoU (train and distill end so). A requeued SLURM job resumes without
    `resume`: it runs its batch script again as it was submitted, and refusing the run
    directory would end the job the requeue saved."""
    from segdistill.train import best_validation, train

    checkpoint = cfg.run.path() / RESUME_CHECKPOINT
    if not resume and slurm_requeued() and checkpoint.is_file():
        print_once(f"notice: SLURM requeued this job: continuing the run from {checkpoint}")
        resume = True
    start = time.perf_counter()
    run_dir = train(cfg, resume=resume)
    took = f"{time.perf_counter() - start:.1f} s"
    best = best_validation(run_dir)
    if best is not None:
        kept = "in checkpoints/best.safetensors" if cfg.trainer.keep_best else "not kept"
        # "after N epochs", not "epoch N": Lightning's bar and metrics.csv count from 0.
        epochs = f"{best[1]} epoch" + ("s" if best[1] != 1 else "")
        took += f"; best val mIoU {best[0]:.4f} after {epochs}, {kept}"
    print_once(f"run directory: {run_dir} ({took})")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from segdistill.ensemble import train_member, write_manifest
    from segdistill.models.teachers import MANIFEST_FILE

    cfg = load_run_config(args)
    if args.members is not None:
        cfg = replace_values(cfg, {"ensemble.members": args.members}, "--members")
    members = cfg.ensemble.members
    if args.member is not None and not 0 <= args.member < members:
        raise ConfigError(f"--member {args.member} is not a member index (0..{members - 1})")
    ensemble_dir = cfg.run.path()
    for index in [args.member] if args.member is not None else range(members):
        train_member(cfg, ensemble_dir, index)
        if is_rank_zero():
            finished, beyond = write_manifest(ensemble_dir, members)
            print(f"{ensemble_dir / MANIFEST_FILE}: {finished} of {members} members finished")
            if beyond:
                print(
                    f"notice: {', '.join(beyond)} finished beyond --members {members}: "
                    "left out of the ensemble (kept on disk; a larger --members takes them in)"
                )
    return 0
