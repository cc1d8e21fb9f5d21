"""Peak memory of `Ensemble.signals` at 1024x2048 for N = 2, 5, 10 members: flat in N.

Each N runs in a fresh subprocess, so one run's high-water mark cannot hide another's.
The child builds the teacher and the image, warms torch up on a tiny input, then reports
how far `signals` raised the peak above the high-water mark of the set-up: the process's
peak resident set size (`resource.getrusage(...).ru_maxrss`; tracemalloc does not see
torch's allocations) on CPU, `torch.cuda.max_memory_allocated` on CUDA.

Members are 1x1 convolutions 3 -> C, so a run takes seconds; the maps the statistics keep
([B, C, H, W] mean, sum of squared deviations, one pass's logits and probabilities) are the
same as with real members, whose own activations come on top and are freed between members.
All statistics are asked for (mean, std, pred_std, variance, entropy, mutual information).

    .venv/bin/python benchmarks/teacher_memory.py                 # N = 2 5 10, 1024x2048, CPU
    .venv/bin/python benchmarks/teacher_memory.py --readme benchmarks/README.md

`--readme` rewrites the "Teacher memory" section of that file (creating the file if needed)
and leaves the other sections alone. The exit status is 1 when the peaks are not flat in N:
when the largest exceeds the smallest by one [1, C, H, W] map or more (stacking the members'
maps would add a map per member; less is allocator and page-rounding noise, all there is at
small sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from segdistill.models.teachers import Ensemble
from segdistill.outputs import SIGNAL_NAMES, SegOutput

MIB = 2**20
SECTION = "## Teacher memory"


class PointwiseSegmenter(nn.Module):
    """The cheapest member that still makes a full-resolution [B, C, H, W] logit map."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, images: Tensor) -> SegOutput:
        return SegOutput(logits=self.conv(images))


def peak_bytes(device: torch.device) -> int:
    """The process's memory high-water mark on `device`, in bytes."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(members: int, height: int, width: int, classes: int, device: torch.device) -> dict:
    """Peak memory that one `signals` call adds, for an ensemble of `members` (child side)."""
    torch.manual_seed(0)
    needs = SIGNAL_NAMES - {"logits", "features"}
    teacher = Ensemble([PointwiseSegmenter(classes) for _ in range(members)]).to(device)
    teacher.signals(torch.zeros(1, 3, 8, 8, device=device), needs)  # lazy init off the books
    images = torch.randn(1, 3, height, width, device=device)
    before = peak_bytes(device)
    signals = teacher.signals(images, needs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    extra = peak_bytes(device) - before
    mean_probs = signals.require("mean_probs")
    map_bytes = mean_probs.numel() * mean_probs.element_size()
    return {"members": members, "extra_mib": extra / MIB, "maps": extra / map_bytes}


def run_child(members: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(members),
        "--size",
        *map(str, args.size),
        "--classes",
        str(args.classes),
        "--device",
        args.device,
    ]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout)


def write_section(readme: Path, text: str) -> None:
    """Replace the Teacher memory section of `readme` (up to the next '## ' heading), or
    append it; other sections are kept as they are."""
    content = readme.read_text() if readme.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    section = text.rstrip("\n") + "\n\n"  # a blank line before the next heading
    if pattern.search(content):
        content = pattern.sub(lambda _: section, content, count=1)
    else:
        content = content.rstrip("\n") + "\n\n" + section
    readme.write_text(content.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--readme", type=Path, help="rewrite the Teacher memory section here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # memory, not speed, is measured; leave the other cores alone

    if args.child is not None:
        height, width = args.size
        device = torch.device(args.device)
        print(json.dumps(measure(args.child, height, width, args.classes, device)))
        return 0

    results = [run_child(n, args) for n in args.members]
    peaks = [r["extra_mib"] for r in results]
    height, width = args.size
    map_mib = args.classes * height * width * 4 / MIB
    flat = max(peaks) - min(peaks) < map_mib
    ratio = f"max/min {max(peaks) / min(peaks):.2f}" if min(peaks) > 0 else "max/min n/a"
    spread = f"{ratio}, max - min {(max(peaks) - min(peaks)) / map_mib:.2f} maps"
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"CPU ({platform.machine()}), peak RSS"
    )
    lines = [
        SECTION,
        "",
        f"`benchmarks/teacher_memory.py`: extra peak memory of one `Ensemble.signals` call "
        f"(all statistics) on a 1x3x{height}x{width} image, {args.classes} classes, "
        f"1x1-conv members; one [1, {args.classes}, {height}, {width}] float32 map is "
        f"{map_mib:.0f} MiB. {where}, torch {torch.__version__}.",
        "",
        "| members | extra peak (MiB) | in maps |",
        "|--------:|-----------------:|--------:|",
        *(f"| {r['members']} | {r['extra_mib']:.0f} | {r['maps']:.1f} |" for r in results),
        "",
        (
            f"Flat in N ({spread}): statistics accumulate member by member; stacking the "
            "members' probabilities would need at least N maps."
            if flat
            else f"NOT flat in N ({spread})."
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.readme is not None:
        write_section(args.readme, text)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
