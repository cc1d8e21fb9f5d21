"""`segdistill train` (one network) and `segdistill ensemble` (the members of a deep ensemble).

    segdistill train CONFIG [--set KEY=VALUE ...] [--run-dir DIR] [--resume] [--devices N]
    segdistill ensemble CONFIG --members N [--member I] [--set ...] [--run-dir DIR]

The run directory is --run-dir, else `run.dir` of the config, else runs/<config name>.

An ensemble directory holds one run directory per member, `member_00`, `member_01`, ...
Member i is trained with seed + i (its own random initialisation, data order and
augmentation) and the i-th value (cycling) of every list in `ensemble.vary`. Members are
independent, so they can train in parallel: one process per member with `--member I`
(e.g. `--member $SLURM_ARRAY_TASK_ID` in a SLURM array). A finished member writes
`member_XX/member.json` and is skipped on a re-run; an interrupted one resumes from its
last checkpoint. After each member, `manifest.json` is rebuilt from all finished members
under a file lock and replaced atomically, so parallel members never drop each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any

from segdistill.checkpoints import atomic_write, weights_path
from segdistill.commands.arguments import add_overrides
from segdistill.config import SegConfig, load_config, replace_values
from segdistill.distributed import is_rank_zero
from segdistill.errors import ConfigError
from segdistill.train import RESUME_CHECKPOINT, train

MEMBER_FILE = "member.json"
MANIFEST_FILE = "manifest.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmenter, or distil one when the config has a distill section",
        description="Train a segmenter (or distil a teacher into it) into a run directory.",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run from RUN_DIR/{RESUME_CHECKPOINT}",
    )
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
        type=int,
        metavar="N",
        help="number of members (default: ensemble.members of the config)",
    )
    parser.add_argument(
        "--member", type=int, metavar="I", help="train only member I (0-based), e.g. one per GPU"
    )
    parser.set_defaults(func=run_ensemble)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the YAML config file")
    add_overrides(parser, "optim.lr=0.02 data.crop_size=[64,128]")
    parser.add_argument(
        "--run-dir", metavar="DIR", help="output directory (default: run.dir, else runs/NAME)"
    )
    parser.add_argument(
        "--devices", type=int, metavar="N", help="GPUs (or CPU processes) per node; > 1: DDP"
    )
    parser.add_argument(
        "--num-nodes", type=int, metavar="N", help="number of nodes (multi-node DDP)"
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
    run_dir = train(load_run_config(args), resume=args.resume)
    _say(f"run directory: {run_dir}")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
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
            finished = write_manifest(ensemble_dir, members)
            print(f"{ensemble_dir / MANIFEST_FILE}: {finished} of {members} members finished")
    return 0


def member_variations(cfg: SegConfig, index: int) -> dict[str, Any]:
    """Member `index`'s value of every `ensemble.vary` key (the lists cycle)."""
    return {key: choices[index % len(choices)] for key, choices in cfg.ensemble.vary.items()}


def member_config(cfg: SegConfig, ensemble_dir: Path, index: int) -> SegConfig:
    """Member `index`'s config: seed + index, its run directory and its variations."""
    values = {
        "seed": cfg.seed + index,
        "run.dir": str(ensemble_dir / f"member_{index:02d}"),
        **member_variations(cfg, index),
    }
    return replace_values(cfg, values, f"ensemble member {index}")


def train_member(cfg: SegConfig, ensemble_dir: Path, index: int) -> None:
    """Train member `index` unless it finished before (resume it if it was interrupted)."""
    member_cfg = member_config(cfg, ensemble_dir, index)
    member_dir = member_cfg.run.path()
    if (member_dir / MEMBER_FILE).is_file():
        _say(f"{member_dir}: finished before, skipped")
        return
    train(member_cfg, resume=(member_dir / RESUME_CHECKPOINT).is_file())
    if is_rank_zero():
        entry = {
            "name": member_dir.name,
            # Relative to the ensemble directory, like every path in the manifest.
            "checkpoint": weights_path(member_dir).relative_to(ensemble_dir).as_posix(),
            "seed": member_cfg.seed,
            "variations": member_variations(cfg, index),
            "model": dataclasses.asdict(member_cfg.model),
            "num_classes": member_cfg.data.num_classes,
        }
        atomic_write(member_dir / MEMBER_FILE, lambda f: f.write(_json_bytes(entry)))


def write_manifest(ensemble_dir: Path, planned: int) -> int:
    """Rebuild `manifest.json` from the finished members' entries; returns their number.

    The lock serialises the scan and the write of parallel members: without it, one could
    write a scan made before another member finished, after that member's own write.
    """
    with open(ensemble_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        entries = [
            json.loads(path.read_text())
            for path in sorted(ensemble_dir.glob(f"member_*/{MEMBER_FILE}"))
        ]
        manifest = {"planned_members": planned, "members": entries}
        atomic_write(ensemble_dir / MANIFEST_FILE, lambda f: f.write(_json_bytes(manifest)))
    return len(entries)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _say(message: str) -> None:
    """Print once, from the first process of a distributed run."""
    if is_rank_zero():
        print(message)
