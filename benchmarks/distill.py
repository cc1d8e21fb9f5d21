"""Training-step time and peak memory of DUDES distillation, cached teacher vs online
teacher, each relative to plain cross-entropy training of the same student.

Three modes train the same student (DeepLabV3+ with the DUDES scalar head; ResNet-18 at
`--width`) on SynthStreets crops with the project's training path (`segdistill.train`:
data set and augmentation, `build_distillation`, `attach_teacher_cache`,
`SegmentationTask` in a Lightning `Trainer`):

- plain:  cross-entropy only (no teacher);
- online: DUDES, a `--members` ensemble of the student's architecture runs every step;
- cached: DUDES, pred_std read from the memory-mapped teacher cache (built once first).

A step is the time between the ends of two consecutive training batches, so it includes
loading and augmenting the batch (`num_workers=0`: in this process, counted in full),
the forward and backward passes and the optimiser step. Each mode runs in its own
subprocess (peak RSS per mode, `ru_maxrss`), and the modes are interleaved: every round
runs all three, in a rotated order, so drift in the machine's load hits all alike. The
first `--warmup` steps of every run are dropped; the table gives the median step over
all rounds and its ratio to plain.

    .venv/bin/python benchmarks/distill.py                    # 128x256, batch 8, 5 members
    .venv/bin/python benchmarks/distill.py --rounds 5 --steps 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from segdistill import train as training
from segdistill.checkpoints import build_model, save_weights
from segdistill.config import (
    DataConfig,
    DistillConfig,
    MethodSpec,
    ModelConfig,
    SegConfig,
    TeacherConfig,
    TrainerConfig,
)
from segdistill.data import synthstreets

MODES = ("plain", "online", "cached")
MIB = 2**20
GOAL = 1.15  # cached step / plain step


class StepTimer(L.Callback):
    """Wall-clock time between the ends of consecutive training batches."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self.ends.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, *args: Any) -> None:
        self.ends.append(time.perf_counter())

    def steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def config(args: argparse.Namespace, mode: str) -> SegConfig:
    """The run of `mode`: plain has no distill section; cached adds the cache folder."""
    work = Path(args.workdir)
    distill = None
    if mode != "plain":
        distill = DistillConfig(
            teacher=TeacherConfig(kind="ensemble", path=str(work / "ensemble")),
            methods=[MethodSpec("dudes")],
            teacher_cache=str(work / "cache") if mode == "cached" else None,
        )
    return SegConfig(
        data=DataConfig(
            root=str(work / "synth"),
            crop_size=list(args.size),
            batch_size=args.batch,
            num_workers=0,
        ),
        model=student_config(args),
        trainer=TrainerConfig(max_epochs=1, accelerator="cpu"),
        distill=distill,
    )


def student_config(args: argparse.Namespace, head: str | None = "scalar") -> ModelConfig:
    return ModelConfig(
        encoder_options={"output_stride": 16, "width": args.width}, uncertainty_head=head
    )


def prepare(args: argparse.Namespace) -> float:
    """Write the data set and the ensemble into the work folder and build the cache; returns
    the seconds the cache build took."""
    work = Path(args.workdir)
    images = args.batch * (args.warmup + args.steps)
    data = synthstreets.SynthConfig(size=tuple(args.size), train=images, val=1, test=0, shifts=())
    synthstreets.generate(work / "synth", data, progress=False)
    members = []
    member_config = student_config(args, head=None)
    for index in range(args.members):
        torch.manual_seed(index)
        path = work / "ensemble" / f"member_{index:02d}.safetensors"
        save_weights(path, build_model(member_config, 19), member_config)
        members.append({"checkpoint": path.name})
    (work / "ensemble" / "manifest.json").write_text(json.dumps({"members": members}))
    cfg = config(args, "cached")
    start = time.perf_counter()
    model = build_model(cfg.model, 19)
    methods, teacher = training.build_distillation(cfg, model)
    train_set = training.build_dataset(cfg.data, "train", train=True)
    training.attach_teacher_cache(cfg, methods, teacher, train_set)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Child side: train `warmup + steps` steps of `mode`, return step times and peak RSS."""
    cfg = config(args, mode)
    L.seed_everything(0, verbose=False)
    train_set = training.build_dataset(cfg.data, "train", train=True)
    model = build_model(cfg.model, 19)
    methods, teacher = None, None
    if cfg.distill is not None:
        methods, teacher = training.build_distillation(cfg, model)
        if cfg.distill.teacher_cache is not None:
            train_set, teacher = training.attach_teacher_cache(cfg, methods, teacher, train_set)
    steps = args.warmup + args.steps
    task = training.SegmentationTask(
        model, cfg.optim, methods, teacher, total_steps=steps, num_classes=19
    )
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(task, train_dataloaders=loader)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"mode": mode, "steps": timer.steps()[args.warmup :], "peak_rss_mib": peak / MIB}


def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--workdir", args.workdir]
    command += ["--size", *map(str, args.size), "--batch", str(args.batch)]
    command += ["--width", str(args.width), "--members", str(args.members)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--threads", str(args.threads)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, runs: list[dict[str, Any]], build_s: float) -> str:
    steps = {mode: [s for r in runs if r["mode"] == mode for s in r["steps"]] for mode in MODES}
    median = {mode: statistics.median(steps[mode]) for mode in MODES}
    peak = {mode: max(r["peak_rss_mib"] for r in runs if r["mode"] == mode) for mode in MODES}
    height, width = args.size
    rows = [
        f"| {mode} | {median[mode]:.3f} | {median[mode] / median['plain']:.2f} | "
        f"{min(steps[mode]):.3f} | {max(steps[mode]):.3f} | {peak[mode]:.0f} |"
        for mode in MODES
    ]
    ratio = median["cached"] / median["plain"]
    verdict = "meets" if ratio <= GOAL else "MISSES"
    return "\n".join(
        [
            f"DeepLabV3+ ResNet-18 width {args.width} + scalar head, {height}x{width} crops, "
            f"batch {args.batch}, {args.members}-member ensemble of the same network; "
            f"{args.rounds} interleaved rounds x {args.steps} steps (after {args.warmup} "
            f"warm-up steps) per mode; torch threads {args.threads}, data loading in the "
            f"training process. {platform.machine()}, torch {torch.__version__}. Cache "
            f"build (once): {build_s:.1f} s.",
            "",
            "| mode | median step (s) | / plain | min (s) | max (s) | peak RSS (MiB) |",
            "|------|----------------:|--------:|--------:|--------:|---------------:|",
            *rows,
            "",
            f"cached / plain = {ratio:.2f}: {verdict} the goal of <= {GOAL}.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="data, ensemble and cache (default: a temp folder)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child is not None:
        print(json.dumps(measure(args, args.child)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        build_s = prepare(args)
        runs = []
        for round_index in range(args.rounds):
            shift = round_index % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                runs.append(run_child(args, mode))
                print(f"round {round_index + 1} {mode}: {runs[-1]['steps']}", file=sys.stderr)
        print(report(args, runs, build_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
