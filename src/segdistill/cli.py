"""The `segdistill` command line: one sub-command per job, each in `segdistill.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. Follow a command from here into its module.

Building the parser imports no torch, Lightning or matplotlib, so that `--help` and a
mistyped argument answer at once: a command module imports what its work needs inside
the function that does it, and the help texts' file names, choices and defaults come from
`segdistill.defaults` (tests/test_cli.py checks this).
"""

from __future__ import annotations

import argparse
import os
import sys

from segdistill import __version__
from segdistill.commands import (
    bench,
    data,
    demo,
    distill,
    evaluate,
    experiment,
    export,
    predict,
    report,
    train,
)
from segdistill.errors import SegdistillError

# One module per command group, in the order `--help` lists them.
COMMAND_MODULES = (
    demo,
    experiment,
    data,
    train,
    distill,
    evaluate,
    predict,
    export,
    bench,
    report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segdistill",
        description="Distil segmentation teachers into fast students that report uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"segdistill {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader gone (`| head`) shows here, not at the exit
    except BrokenPipeError:
        # Stop quietly, as Unix tools do; stdout to /dev/null so that the exit is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "interrupted: run the same command again (finished work is kept where it can be: "
            "train and distill go on with --resume once the run has checkpoints/last.ckpt, "
            "an experiment after its last finished step; data synth starts the set again)",
            file=sys.stderr,
        )
        return 130
    except SegdistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
