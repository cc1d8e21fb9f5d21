"""Memory of the streaming SegmentationEvaluator: does it grow with the data set?

Evaluates N synthetic images (random logits, uncertainty and labels, generated batch by
batch and dropped after `update`) for each N in --images, each N in a fresh process so that
the peak resident set size (RSS) of one run is not hidden by another. Reports per run:

- state: bytes of the evaluator state (all its tensors), exact;
- py_peak: tracemalloc peak of Python-level allocations during evaluation (tensor buffers
  are allocated by torch outside tracemalloc's view; their cost is in the RSS);
- rss_peak: peak RSS of the process (includes one batch of inputs and its temporaries);
- rss_growth: RSS after `compute()` minus RSS after the first image, i.e. what the
  evaluation kept beyond one batch (and what computing the results took, ~2 MiB);
and the ratio of state, py_peak and rss_peak between the last and the first N given.

RSS can creep up over the first tens of images although nothing is kept: glibc's malloc
raises its mmap threshold after freeing large blocks, so later per-batch temporaries come
from the heap, which fragments. `--malloc-mmap-threshold 1048576` fixes the threshold
(MALLOC_MMAP_THRESHOLD_) in the worker processes and shows the evaluator's own footprint.

    .venv/bin/python benchmarks/eval_memory.py                       # 5 vs 500, 1024x2048
    .venv/bin/python benchmarks/eval_memory.py --images 5 50 --size 512 1024
    .venv/bin/python benchmarks/eval_memory.py --device cuda         # inputs on the GPU
    .venv/bin/python benchmarks/eval_memory.py --malloc-mmap-threshold 1048576
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import torch

from segdistill.metrics import SegmentationEvaluator


def rss_bytes() -> int:
    """Current resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run(images: int, height: int, width: int, classes: int, batch: int, device: str) -> dict:
    """Evaluate `images` random images and return the memory figures of this process."""
    torch.manual_seed(0)
    evaluator = SegmentationEvaluator(classes, inputs="logits")
    tracemalloc.start()
    start = time.perf_counter()
    rss_first = 0
    done = 0
    while done < images:
        b = min(batch, images - done)
        logits = torch.randn(b, classes, height, width, device=device)
        uncertainty = torch.rand(b, 1, height, width, device=device)
        target = torch.randint(0, classes, (b, height, width), device=device)
        target[:, : height // 8] = 255  # some ignored pixels, as in real label maps
        evaluator.update(logits, uncertainty, target)
        del logits, uncertainty, target
        done += b
        if not rss_first:
            rss_first = rss_bytes()
    result = evaluator.compute()
    seconds = time.perf_counter() - start
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state = sum(v.nbytes for v in evaluator.state_dict().values() if isinstance(v, torch.Tensor))
    return {
        "images": images,
        "pixels": result["num_pixels"],
        "seconds": round(seconds, 1),
        "state": state,
        "py_peak": py_peak,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_growth": rss_bytes() - rss_first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5, 500])
    parser.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    h, w = args.size
    if args.worker:
        print(json.dumps(run(args.images[0], h, w, args.classes, args.batch, args.device)))
        return

    rows = []
    for n in args.images:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--images", str(n)]
        cmd += ["--size", str(h), str(w), "--classes", str(args.classes)]
        cmd += ["--batch", str(args.batch), "--device", args.device]
        env = dict(os.environ)
        if args.malloc_mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))

    mib = 2**20
    print(
        f"SegmentationEvaluator, {h}x{w}, {args.classes} classes, batch {args.batch}, "
        f"device {args.device}, torch threads {torch.get_num_threads()}, "
        f"MALLOC_MMAP_THRESHOLD_ {args.malloc_mmap_threshold or 'glibc default'}"
    )
    print(
        f"{'images':>7} {'pixels':>12} {'s':>7} {'state MiB':>10} {'py_peak MiB':>12} "
        f"{'rss_peak MiB':>13} {'rss_growth MiB':>15}"
    )
    for r in rows:
        print(
            f"{r['images']:>7} {r['pixels']:>12} {r['seconds']:>7} {r['state'] / mib:>10.3f} "
            f"{r['py_peak'] / mib:>12.3f} {r['rss_peak'] / mib:>13.1f} "
            f"{r['rss_growth'] / mib:>15.1f}"
        )
    first, last = rows[0], rows[-1]
    print(
        f"ratio {last['images']} / {first['images']} images: "
        + ", ".join(f"{k} {last[k] / first[k]:.3f}" for k in ("state", "py_peak", "rss_peak"))
    )


if __name__ == "__main__":
    main()
