"""Training-step time and peak memory of DUDES distillation, cached teacher vs online
teacher, each relative to plain cross-entropy training of the same student.

Three modes train the same student (DeepLabV3+ with the DUDES scalar head; ResNet-18 at
`--width`) on SynthStreets crops, built with the project's training code
(`segdistill.train`: data set and augmentation, `build_distillation`,
`attach_teacher_cache`, `SegmentationTask`):

- plain:  cross-entropy only (no teacher);
- online: DUDES, a `--members` ensemble of the student's architecture runs every step;
- cached: DUDES, pred_std read from the teacher cache (built once first; one positioned
  read per image).

A step is what `SegmentationTask.training_step` does plus the data and the update: load and
augment the batch (`num_workers=0`, so in this process and counted in full), the teacher
signals (`task.teacher_signals`: the ensemble, or the cached maps), the student's forward
pass, the loss with the crop-padding mask (`teacher_valid`), backward and the SGD step.
Timing interleaves the modes step by step in one process (step i of plain, of online, of
cached, in an order rotated every step), so the machine's changing load hits all modes
alike; the first `--warmup` steps of each mode are dropped and the table gives the median
step and, against plain, the median of the per-round ratios (`segdistill.bench.
paired_ratio`: the steps of one round ran back to back, so a load change between rounds
cancels).
Peak memory (`ru_maxrss`) is measured per mode in its own subprocess running a few steps.

    .venv/bin/python benchmarks/distill.py                    # 128x256, batch 8, 5 members
    .venv/bin/python benchmarks/distill.py --steps 20 --threads 2
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
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from segdistill import train as training
from segdistill.bench import paired_ratio
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
from segdistill.teacher_cache import valid_mask

MODES = ("plain", "online", "cached")
MIB = 2**20
GOAL = 1.15  # cached step / plain step


class Runner:
    """One mode's student, loss, optimiser and endless training batches."""

    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        cfg = config(args, mode)
        L.seed_everything(0, verbose=False)
        labelled = training.build_dataset(cfg.data, "train", train=True)
        train_set: training.TrainingSet = labelled
        self.model = build_model(cfg.model, 19)
        methods, teacher = None, None
        if cfg.distill is not None:
            methods, teacher = training.build_distillation(cfg, self.model)
            if cfg.distill.teacher_cache is not None:
                train_set, teacher = training.attach_teacher_cache(cfg, methods, teacher, labelled)
        self.task = training.SegmentationTask(
            self.model, cfg.optim, methods, teacher, total_steps=1000, num_classes=19
        )
        self.optimizer = self.task.configure_optimizers()["optimizer"]
        self.loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True)
        self.batches = iter(self.loader)

    def step(self) -> float:
        """One training step; returns its wall-clock seconds."""
        start = time.perf_counter()
        batch = next(self.batches, None)
        if batch is None:  # a new epoch
            self.batches = iter(self.loader)
            batch = next(self.batches)
        signals = self.task.teacher_signals(batch)
        output = self.model(batch["image"])
        teacher_valid = valid_mask(batch["maps"])
        loss = self.task.methods(output, signals, batch["label"], teacher_valid)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


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


def student_config(
    args: argparse.Namespace, head: Literal["scalar", "per_class"] | None = "scalar"
) -> ModelConfig:
    return ModelConfig(
        encoder_options={"output_stride": 16, "width": args.width}, uncertainty_head=head
    )


def num_images(args: argparse.Namespace) -> int:
    """Training images: one epoch is warm-up plus measured steps."""
    return args.batch * (args.warmup + args.steps)


def prepare(args: argparse.Namespace) -> float:
    """Write the data set and the ensemble into the work folder and build the cache; returns
    the seconds the cache build took."""
    work = Path(args.workdir)
    data = synthstreets.SynthConfig(
        size=tuple(args.size), train=num_images(args), val=1, test=0, shifts=()
    )
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


def time_steps(args: argparse.Namespace) -> dict[str, list[float]]:
    """Step times of every mode, interleaved step by step (warm-up steps dropped)."""
    runners = {mode: Runner(args, mode) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for index in range(args.warmup + args.steps):
        shift = index % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            seconds = runners[mode].step()
            if index >= args.warmup:
                times[mode].append(seconds)
    return times


def peak_rss_mib(args: argparse.Namespace, mode: str) -> float:
    """Child side: the peak RSS of a process that builds `mode` and trains a few steps."""
    runner = Runner(args, mode)
    for _ in range(args.warmup + 2):
        runner.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # KiB on Linux


def run_child(args: argparse.Namespace, mode: str) -> float:
    command = [sys.executable, __file__, "--child", mode, "--workdir", args.workdir]
    command += ["--size", *map(str, args.size), "--batch", str(args.batch)]
    command += ["--width", str(args.width), "--members", str(args.members)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(completed.stdout.strip().splitlines()[-1])


def report(
    args: argparse.Namespace, times: dict[str, list[float]], peaks: dict[str, float], build_s: float
) -> str:
    median = {mode: statistics.median(times[mode]) for mode in MODES}
    vs_plain = {mode: paired_ratio(times[mode], times["plain"]) for mode in MODES}
    height, width = args.size
    rows = [
        f"| {mode} | {median[mode]:.3f} | {vs_plain[mode]:.2f} | "
        f"{min(times[mode]):.3f} | {max(times[mode]):.3f} | {peaks[mode]:.0f} |"
        for mode in MODES
    ]
    ratio = vs_plain["cached"]
    verdict = "meets" if ratio <= GOAL else "MISSES"
    return "\n".join(
        [
            f"DeepLabV3+ ResNet-18 width {args.width} + scalar head, {height}x{width} crops, "
            f"batch {args.batch}, {args.members}-member ensemble of the same network; "
            f"{args.steps} steps per mode interleaved step by step (after {args.warmup} "
            f"warm-up steps); torch threads {args.threads}, data loading in the training "
            f"process. {platform.machine()}, torch {torch.__version__}. Cache build "
            f"(once, {num_images(args)} images): {build_s:.1f} s.",
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
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", help="data, ensemble and cache (default: a temp folder)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child is not None:
        print(peak_rss_mib(args, args.child))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        build_s = prepare(args)
        peaks = {mode: run_child(args, mode) for mode in MODES}
        times = time_steps(args)
        print(report(args, times, peaks, build_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
