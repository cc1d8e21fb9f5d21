"""Channels-last against the default memory format, per network, in one run.

For each network of `models.py`: the paired ratio (channels-last time / default time, the
median over repeats of the two calls of one repeat, run back to back in alternating order)
of an inference forward (batch 1, `--size`) and of a training step (forward, cross-entropy,
backward, SGD step; `--train-batch` at `--train-size`, default 8 at 128x256), the models
holding the same weights. Below 1:
channels-last is faster. `trainer.channels_last` (docs/training.md) trains this way.

    .venv/bin/python benchmarks/channels_last.py                 # about 5 min on 2 cores
    .venv/bin/python benchmarks/channels_last.py --repeats 20 --all
    .venv/bin/python benchmarks/channels_last.py --sources runs/demo/students/dudes ...

With `--sources` it times `Predictor.predict` (forward, softmax and uncertainty at full
size) of saved models instead, each loaded twice, paired the same way.

PSPNet ResNet-101 is skipped unless --all. `--device cuda` times on a GPU (CUDA events,
as `segdistill bench` does). The table is Markdown; benchmarks/README.md keeps
the recorded one.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from models import NETWORKS, NUM_CLASSES, cpu_name
from torch import nn

from segdistill.bench import make_timer, paired_ratio
from segdistill.commands.arguments import parse_size
from segdistill.models import build_segmenter
from segdistill.predictor import Predictor, load_predictor


def paired_ms(
    first: Callable[[], object], second: Callable[[], object], repeats: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Milliseconds of `repeats` calls of each (`segdistill.bench.make_timer`), one call of
    each per repeat, the order alternating so neither always runs second; one warm-up call
    each first."""
    timer = make_timer(device)
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for repeat in range(repeats):
        order = ((0, first), (1, second)) if repeat % 2 == 0 else ((1, second), (0, first))
        for index, call in order:
            times[index].append(timer(call))
    return times


def inference(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.inference_mode():
            model(images)

    return call


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images).logits, labels).backward()
        optimizer.step()

    return call


def time_predict(
    sources: list[str], size: tuple[int, int], device: torch.device, repeats: int
) -> None:
    """One row per saved model: its predict call without and with channels-last."""
    print(f"| model | predict {size[0]}x{size[1]} ms | channels-last / default |")
    print("|---|---|---|", flush=True)
    images = torch.randn(1, 3, *size, device=device)
    for source in sources:
        default = load_predictor(source).to(device)
        converted = load_predictor(source).to(device, channels_last=True)

        def call(predictor: Predictor) -> Callable[[], object]:
            return lambda: predictor.predict(images)

        default_ms, last_ms = paired_ms(call(default), call(converted), repeats, device)
        ratio = paired_ratio(last_ms, default_ms)
        print(f"| {source} | {statistics.median(default_ms):.0f} | {ratio:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="inference size")
    parser.add_argument("--train-size", type=parse_size, default=(128, 256))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="paired repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all", action="store_true", help="also PSPNet ResNet-101")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sources", nargs="+", help="saved models: time their predict calls")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, train_size = args.size, args.train_size
    channels_last = torch.channels_last
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"# {where}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.repeats} paired repeats (median of per-repeat ratios)\n"
    )
    if args.sources:
        time_predict(args.sources, size, device, args.repeats)
        return
    header = [
        "network",
        f"inference {size[0]}x{size[1]} ms",
        "channels-last / default",
        f"train step {train_size[0]}x{train_size[1]} b{args.train_batch} ms",
        "channels-last / default",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for label, arch, encoder in NETWORKS:
        if encoder == "resnet101" and not args.all:
            continue
        model = build_segmenter(arch, encoder, NUM_CLASSES).to(device).eval()
        # Module.to takes memory_format (its documented signature); torch's stubs omit it.
        converted = copy.deepcopy(model).to(memory_format=channels_last)  # type: ignore[call-overload]
        images = torch.randn(1, 3, *size, device=device)
        default_ms, last_ms = paired_ms(
            inference(model, images),
            inference(converted, images.contiguous(memory_format=channels_last)),
            args.repeats,
            device,
        )
        row = [label, f"{statistics.median(default_ms):.0f}"]
        row.append(f"{paired_ratio(last_ms, default_ms):.3f}")
        model.train(), converted.train()
        batch = torch.randn(args.train_batch, 3, *train_size, device=device)
        labels = torch.randint(0, NUM_CLASSES, (args.train_batch, *train_size), device=device)
        default_ms, last_ms = paired_ms(
            training_step(model, batch, labels),
            training_step(converted, batch.contiguous(memory_format=channels_last), labels),
            args.repeats,
            device,
        )
        row.append(f"{statistics.median(default_ms):.0f}")
        row.append(f"{paired_ratio(last_ms, default_ms):.3f}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
