"""`segdistill bench`: parameters, FLOPs, latency and throughput, and the DUDES ratios.

    segdistill bench SOURCE... --size HxW [--batch B] [--repeats N] [--warmup N]
                     [--threads N] [--device DEV] [--channels-last] [--json FILE]
                     [--mc-samples K]

SOURCE: run directories, .safetensors weights, ensemble directories. Models are timed
round robin in one run, so the printed ratios (teacher / student, student / baseline,
with their 95 % intervals and goals) compare numbers measured under the same conditions.
The protocol and the FLOP convention are in `segdistill.bench` and docs/deployment.md.
"""

from __future__ import annotations

import argparse

from segdistill.commands.arguments import (
    add_channels_last,
    add_device,
    add_mc_samples,
    add_model_sources,
    non_negative_int,
    output_file,
    parse_size,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` command."""
    parser = subparsers.add_parser(
        "bench",
        help="measure parameters, FLOPs, latency and throughput of models side by side",
        description="Benchmark model sources in one interleaved run and print the latency "
        "ratios teacher/student and student/baseline, each with a 95% interval of its "
        "median, against their goals.",
    )
    add_model_sources(parser, "sources", "SOURCE")
    parser.add_argument("--size", type=parse_size, required=True, metavar="HxW", help="input size")
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        metavar="B",
        help="batch size (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        metavar="N",
        default=25,
        help="timed calls per model (default %(default)s; 6 or more give each ratio a 95%% "
        "interval, and more narrow it)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        metavar="N",
        default=5,
        help="untimed calls per model first (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's)"
    )
    add_device(parser)
    add_channels_last(parser)
    parser.add_argument(
        "--json", type=output_file, metavar="FILE", help="also write the results here"
    )
    add_mc_samples(parser)
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from segdistill.bench import benchmark, format_result, to_json
    from segdistill.jsonfiles import write_json
    from segdistill.predictor import load_predictor

    predictors = [load_predictor(source, mc_samples=args.mc_samples) for source in args.sources]
    if args.json is not None:  # before the timed runs, not after them
        for predictor in predictors:
            predictor.check_not_an_input(args.json, "--json")
    result = benchmark(
        predictors,
        args.size,
        args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
        channels_last=args.channels_last,
    )
    print(format_result(result))
    if args.json is not None:
        write_json(args.json, to_json(result))
        print(f"wrote {args.json}")
    return 0
