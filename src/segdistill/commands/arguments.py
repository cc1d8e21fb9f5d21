"""Command-line arguments that several commands share, defined once so that their names,
defaults and help texts cannot drift apart."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segdistill.defaults import DEFAULT_MC_SAMPLES
from segdistill.errors import ConfigError
from segdistill.output_paths import check_output_file, check_output_folder

MODEL_SOURCE_HELP = "run directory, .safetensors weights, or ensemble directory / manifest.json"


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. data loader workers)."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (e.g. rows of a picture)."""
    return _int_at_least(text, 1)


def _finite_float(text: str, at_least: float, inclusive: bool) -> float:
    """A finite number above `at_least` (or equal to it when `inclusive`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    above = value >= at_least if inclusive else value > at_least
    if not (math.isfinite(value) and above):
        bound = f"{'>=' if inclusive else '>'} {at_least:g}"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, not {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (e.g. a tolerance, the top of a colour scale)."""
    return _finite_float(text, 0.0, inclusive=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (e.g. an uncertainty threshold)."""
    return _finite_float(text, 0.0, inclusive=True)


def share_below_one(text: str) -> float:
    """argparse type: a share in [0, 1) (e.g. a false-alarm rate; 1 would flag everything)."""
    value = non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share below 1, not {text}")
    return value


def mc_sample_count(text: str) -> int:
    """argparse type: an integer >= 2 (one dropout pass has no spread)."""
    return _int_at_least(text, 2)


def parse_size(text: str) -> tuple[int, int]:
    """ "128x256" -> (128, 256), height x width."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x256, not {text!r}") from err
    if min(height, width) < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return height, width


def _checked_path(text: str, check: Callable[[Path, str], None]) -> Path:
    path = Path(text)
    try:
        check(path, "")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None
    return path


def output_folder(text: str) -> Path:
    """argparse type: a folder to write into (it exists, or can be made)."""
    return _checked_path(text, check_output_folder)


def output_file(text: str) -> Path:
    """argparse type: a file to write (new, or one to replace; not a folder)."""
    return _checked_path(text, check_output_file)


# Formats a figure is written in, by its file's suffix (a name without one: PNG).
FIGURE_FORMATS = ("png", "jpg", "jpeg", "svg", "pdf")


def figure_file(text: str) -> Path:
    """argparse type: an image file to write, PNG, or another of FIGURE_FORMATS by its
    suffix."""
    path = output_file(text)
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text}: .{suffix} is not an image format written here; give a "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)} file"
        )
    return path


def add_model_sources(parser: argparse.ArgumentParser, name: str, metavar: str) -> None:
    """Positional `name`: one or more models to load with `load_predictor`."""
    parser.add_argument(name, nargs="+", type=Path, metavar=metavar, help=MODEL_SOURCE_HELP)


def add_mc_samples(parser: argparse.ArgumentParser) -> None:
    """--mc-samples K: stochastic passes of an MC-dropout model."""
    parser.add_argument(
        "--mc-samples",
        type=mc_sample_count,
        default=DEFAULT_MC_SAMPLES,
        metavar="K",
        help="dropout passes for an MC-dropout checkpoint, at least 2 (default %(default)s)",
    )


def device_choice(text: str) -> str | None:
    """argparse type: "auto" (None: CUDA when available, else the CPU), "cpu", "cuda" or
    "cuda:N". Whether the machine has that GPU is checked when the device is used."""
    if text == "auto":
        return None
    if re.fullmatch(r"cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(
            f"device must be auto, cpu, cuda or cuda:N (N a GPU index), not {text!r}"
        )
    return text


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device: where the models run; one spelling for every command that runs them."""
    parser.add_argument(
        "--device",
        type=device_choice,
        default=None,
        metavar="DEV",
        help="auto, cpu, cuda or cuda:N (default auto: cuda when available, else cpu)",
    )


def add_channels_last(parser: argparse.ArgumentParser) -> None:
    """--channels-last: models and images in the channels-last memory format."""
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="models and images in the channels-last memory format (faster on most CPUs)",
    )


class _ExtendOverrides(argparse._ExtendAction):
    """Collects KEY=VALUE words. --set takes every word after it, so a file name there was
    meant as the positional argument: say so instead of "config is required"."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        for value in values:
            if "=" not in value:
                raise argparse.ArgumentError(
                    self,
                    f"{value!r} is not KEY=VALUE (--set takes every word after it: put the "
                    "config file before --set)",
                )
        super().__call__(parser, namespace, values, option_string)


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """--set KEY=VALUE ... (repeatable), collected into `args.overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action=_ExtendOverrides,
        default=[],
        metavar="KEY=VALUE",
        help=f"override config keys, e.g. --set {example}",
    )
