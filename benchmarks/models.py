"""Size and CPU speed of the segdistill networks.

For each network: trainable parameters, convolution GMACs at 1024x2048, inference latency
(batch 1, median of warm runs) at each `--sizes`, and training throughput (images/s,
forward + backward + SGD step, over `--repeats` steps) at `--train-size` and
`--train-batch` (default the quick size 128x256, batch 8; at least 2, for batch norm).

    .venv/bin/python benchmarks/models.py                  # default, about 5 min on 2 cores
    .venv/bin/python benchmarks/models.py --threads 2 --repeats 3 --sizes 512x1024 --all

PSPNet ResNet-101 at 1024x2048 takes minutes on a laptop CPU and is skipped unless --all.
The printed table is Markdown; benchmarks/README.md keeps the recorded one.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from segdistill.commands.arguments import parse_size
from segdistill.models import build_segmenter, count_parameters

NUM_CLASSES = 19

# (label, arch, encoder) of the papers' networks.
NETWORKS = (
    ("DeepLabV3+ ResNet-18 (DUDES)", "deeplabv3plus", "resnet18"),
    ("DeepLabV3+ ResNet-50 (He teacher)", "deeplabv3plus", "resnet50"),
    ("DeepLabV3+ MobileNetV2 (Holder)", "deeplabv3plus", "mobilenetv2"),
    ("PSPNet ResNet-18 (Karine student)", "pspnet", "resnet18"),
    ("PSPNet ResNet-101 (Karine teacher)", "pspnet", "resnet101"),
    ("NfS-SegNet (Oh)", "nfs", "nfsnet"),
)

# (encoder, size) pairs too slow for the default run.
SLOW = {("resnet101", (1024, 2048))}

MACS_SIZE = (1024, 2048)


def conv_gmacs(arch: str, encoder: str, size: tuple[int, int]) -> float:
    """Multiply-accumulates of all convolutions for one image, counted on the meta device
    (shapes only, nothing is computed)."""
    with torch.device("meta"):
        model = build_segmenter(arch, encoder, NUM_CLASSES).eval()
        total = 0

        def count(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
            nonlocal total
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * kernel

        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_hook(count)
        model(torch.empty(1, 3, *size))
    return total / 1e9


def latency(model: nn.Module, size: tuple[int, int], repeats: int) -> float:
    """Median seconds of `repeats` inference forwards after one warm-up."""
    x = torch.randn(1, 3, *size)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_throughput(model: nn.Module, size: tuple[int, int], batch: int, steps: int) -> float:
    """Images per second of SGD training steps (cross-entropy) after one warm-up step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, *size)
    labels = torch.randint(0, NUM_CLASSES, (batch, *size))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()

    model.train()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 1024), (1024, 2048)])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-size", type=parse_size, default=(128, 256))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--all", action="store_true", help="also run the slow combinations")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes, train_size = args.sizes, args.train_size
    print(
        f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.repeats} timed runs (median), {NUM_CLASSES} classes\n"
    )
    header = ["network", "params", f"GMACs {MACS_SIZE[0]}x{MACS_SIZE[1]}"]
    header += [f"latency {h}x{w} (s)" for h, w in sizes]
    header += [f"train img/s {train_size[0]}x{train_size[1]} b{args.train_batch}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for label, arch, encoder in NETWORKS:
        model = build_segmenter(arch, encoder, NUM_CLASSES).eval()
        row = [label, f"{count_parameters(model):,}", f"{conv_gmacs(arch, encoder, MACS_SIZE):.1f}"]
        for size in sizes:
            skip = (encoder, size) in SLOW and not args.all
            row.append("(--all)" if skip else f"{latency(model, size, args.repeats):.3f}")
        throughput = train_throughput(model, train_size, args.train_batch, args.repeats)
        row.append(f"{throughput:.1f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
