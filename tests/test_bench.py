"""`segdistill bench`: the schema, ratios from the measured numbers, FLOP counting.

No assertion here depends on how fast anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from doc_layouts import DOCS, json_block_tree, key_tree
from segdistill.bench import (
    SIZE_NOTE,
    BenchResult,
    ModelBench,
    benchmark,
    compute_ratios,
    count_flops,
    format_result,
    make_timer,
    median_interval,
    paired_ratio,
    to_json,
)
from segdistill.checkpoints import save_weights
from segdistill.cli import main
from segdistill.config import ModelConfig
from segdistill.errors import ConfigError
from segdistill.models import build_segmenter
from segdistill.outputs import SegOutput
from segdistill.pipeline.results import _bench_line
from segdistill.predictor import Predictor

CLASSES = 3
# The settings format_result prints, as a run on 32x32 inputs records them.
SETTINGS = {
    "size": [32, 32], "batch": 1, "device": "cpu", "device_name": "test CPU", "threads": 1,
    "channels_last": False, "torch": "2.x", "warmup": 0, "repeats": 10, "timer": "perf_counter",
}  # fmt: skip


def save_tiny(path: Path, head: str | None = None, mc_dropout: float = 0.0) -> Path:
    """A tiny DeepLabV3+ (ResNet-18 at width 0.125) saved as a weights file."""
    config = ModelConfig(
        encoder_options={"width": 0.125}, uncertainty_head=head, mc_dropout=mc_dropout
    )
    model = build_segmenter(
        config.arch, config.encoder, CLASSES, head, config.encoder_options, mc_dropout
    )
    save_weights(path, model, config)
    return path


class OneConv(nn.Module):
    """A 'segmenter' that is a single 3x3 convolution (no head: a baseline)."""

    num_classes = CLASSES
    encoder = SimpleNamespace(strides=(1,))  # inputs are padded to multiples of 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CLASSES, 3, padding=1)

    def forward(self, x: Tensor) -> SegOutput:
        return SegOutput(self.conv(x))


def test_cli_bench_reports_every_model_and_the_ratios(tmp_path, capsys) -> None:
    student = save_tiny(tmp_path / "student.safetensors", head="scalar")
    baseline = save_tiny(tmp_path / "baseline.safetensors")
    members = [save_tiny(tmp_path / "ens" / f"m{i}.safetensors") for i in range(2)]
    manifest = {"members": [{"checkpoint": path.name} for path in members]}
    (tmp_path / "ens" / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "bench.json"
    argv = [str(tmp_path / "ens"), str(student), str(baseline), "--size", "30x50"]
    argv += ["--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    assert main(["bench", *argv, "--json", str(out)]) == 0

    captured = capsys.readouterr()
    text = captured.out
    assert "bench: 100%" in captured.err and "1/1 [" in captured.err  # the rounds' bar
    assert "teacher/student" in text and "student/baseline" in text and "1 threads" in text
    assert "channels-last" not in text
    assert "batch 2 x 3 x 30 x 50 (padded to 32 x 64) on cpu" in text
    result = json.loads(out.read_text())
    assert result["settings"]["threads"] == 1 and result["settings"]["size"] == [30, 50]
    # padded as predict pads it
    assert result["settings"]["input_sizes"] == dict.fromkeys(
        ["ens", "student", "baseline"], [32, 64]
    )
    assert all(m["input_size"] == [32, 64] for m in result["models"])
    assert result["settings"]["channels_last"] is False
    models = {m["name"]: m for m in result["models"]}
    assert [m["kind"] for m in result["models"]] == ["ensemble", "student", "baseline"]
    assert models["ens"]["passes"] == 2 and models["student"]["passes"] == 1
    # The ensemble has both members' parameters and FLOPs.
    assert models["ens"]["parameters"] == 2 * models["baseline"]["parameters"]
    assert models["ens"]["gflops_per_image"] == pytest.approx(
        2 * models["baseline"]["gflops_per_image"]
    )
    assert models["student"]["parameters"] > models["baseline"]["parameters"]
    for m in result["models"]:
        latency = m["latency_ms"]
        assert len(latency["runs"]) == 1
        assert latency["min"] <= latency["q25"] <= latency["median"] <= latency["q75"]
        assert m["images_per_s"] == pytest.approx(2 / (latency["median"] / 1e3))
    runs = {name: np.asarray(m["latency_ms"]["runs"]) for name, m in models.items()}
    ratios = {r["ratio"]: r for r in result["ratios"]}
    teacher = ratios["teacher/student"]
    assert teacher["value"] == pytest.approx(np.median(runs["ens"] / runs["student"]))
    assert teacher["goal"] == ">= 2" and teacher["met"] == (teacher["value"] >= 2)
    head = ratios["student/baseline"]
    assert head["value"] == pytest.approx(np.median(runs["student"] / runs["baseline"]))
    assert head["goal"] == "<= 1.02" and head["met"] == (head["value"] <= 1.02)
    # docs/deployment.md writes this file's layout out by hand: the same keys, every level.
    written = key_tree(result)
    written["settings"]["input_sizes"] = {"<model>": None}  # keyed by model name
    assert _documented_bench_keys() == written


def _documented_bench_keys() -> dict:
    """The key tree of the `--json` block of docs/deployment.md."""
    text = (DOCS / "deployment.md").read_text()
    start = text.index("**JSON** (`--json FILE`):")
    return json_block_tree(text[text.index("```json", start) + 7 : text.index("\n```", start + 30)])


def test_flops_of_one_convolution_are_the_hand_formula() -> None:
    predictor = Predictor(
        OneConv(),
        name="conv",
        kind="baseline",
        uncertainty_source="1 - max softmax",
        source=Path("conv.safetensors"),
        home=None,
    )
    height, width, batch = 32, 64, 2
    result = benchmark([predictor], (height, width), batch, repeats=1, warmup=0)
    # 2 FLOPs per multiply-accumulate: C_out x C_in x k x k per output pixel.
    per_image = 2 * CLASSES * 3 * 3 * 3 * height * width
    assert result.models[0].flops == per_image
    conv = nn.Conv2d(4, 6, 5)
    assert count_flops(lambda: conv(torch.zeros(1, 4, 9, 9))) == 2 * 6 * 4 * 5 * 5 * 5 * 5
    assert result.ratios == []


def test_ratios_pair_the_calls_of_a_repeat_and_use_teacher_passes() -> None:
    def model(name: str, kind: str, runs: list[float], passes: int = 1) -> ModelBench:
        return ModelBench(name, name, kind, passes, "", 0, 0.0, 1, (32, 32), runs)

    # The machine slows down 3x for the last two repeats (round robin: all models alike),
    # and the baseline's first call was interrupted (80 ms instead of 10).
    load = np.array([1.0, 1.0, 1.0, 3.0, 3.0])
    models = [
        model("mc", "mc_dropout", list(48.0 * load), passes=5),
        model("student", "student", list(10.1 * load)),
        model("baseline", "baseline", [80.0, 10.0, 10.0, 30.0, 30.0]),
    ]
    ratios = compute_ratios(models)
    assert [(r.label, r.numerator, r.denominator) for r in ratios] == [
        ("teacher/student", "mc", "student"),
        ("student/baseline", "student", "baseline"),
    ]
    assert ratios[0].value == pytest.approx(48.0 / 10.1) and not ratios[0].met
    assert ratios[0].goal == ">= 5"
    # Per repeat: [10.1 / 80, 1.01, 1.01, 1.01, 1.01] -> 1.01; the ratio of the medians
    # (10.1 / 30) would compare a quiet repeat with a loaded one.
    assert ratios[1].value == pytest.approx(1.01) and ratios[1].met
    assert ratios[0].same_input_size and ratios[1].same_input_size
    assert np.median(models[1].runs_ms) / np.median(models[2].runs_ms) == pytest.approx(10.1 / 30)
    with pytest.raises(ValueError, match="same number"):
        paired_ratio([1.0, 2.0], [1.0])


def test_an_mc_dropout_network_counts_its_samples(tmp_path, capsys) -> None:
    mc = save_tiny(tmp_path / "mc.safetensors", mc_dropout=0.3)
    baseline = save_tiny(tmp_path / "baseline.safetensors")
    out = tmp_path / "bench.json"
    argv = [str(mc), str(baseline), "--size", "32x64", "--repeats", "1", "--warmup", "0"]
    assert main(["bench", *argv, "--mc-samples", "3", "--json", str(out)]) == 0
    models = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    assert models["mc"]["kind"] == "mc_dropout" and models["mc"]["passes"] == 3
    assert models["mc"]["gflops_per_image"] == pytest.approx(
        3 * models["baseline"]["gflops_per_image"]
    )


class CountingConv(OneConv):
    calls = 0

    def forward(self, x: Tensor) -> SegOutput:
        self.calls += 1
        return super().forward(x)


def test_warm_up_and_timed_calls_are_as_many_as_asked() -> None:
    network = CountingConv()
    predictor = Predictor(
        network, name="c", kind="baseline", uncertainty_source="", source=Path("c"), home=None
    )
    (model,) = benchmark([predictor], (8, 8), repeats=4, warmup=2).models
    assert len(model.runs_ms) == 4
    assert network.calls == 1 + 2 + 4  # the FLOP count, the warm-up, the timed calls


def test_settings_are_checked() -> None:
    predictor = Predictor(
        OneConv(), name="c", kind="baseline", uncertainty_source="", source=Path("c"), home=None
    )
    with pytest.raises(ConfigError, match="repeats >= 1"):
        benchmark([predictor], (8, 8), repeats=0)
    with pytest.raises(ConfigError, match="at least one model"):
        benchmark([], (8, 8))
    with pytest.raises(ConfigError, match="--threads must be >= 1, got 0"):
        benchmark([predictor], (8, 8), threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            benchmark([predictor], (8, 8), device="cuda")


def test_cli_bench_channels_last_times_every_model_in_that_format(
    tmp_path, capsys, monkeypatch
) -> None:
    formats = []
    plain_predict = Predictor.predict

    def recording_predict(predictor, images):  # noqa: ANN001, ANN202
        convs = [p for p in predictor.model.parameters() if p.dim() == 4]
        formats.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))
        return plain_predict(predictor, images)

    monkeypatch.setattr(Predictor, "predict", recording_predict)
    student = save_tiny(tmp_path / "student.safetensors", head="scalar")
    baseline = save_tiny(tmp_path / "baseline.safetensors")
    out = tmp_path / "bench.json"
    argv = [str(student), str(baseline), "--size", "32x64", "--repeats", "2", "--warmup", "0"]
    assert main(["bench", *argv, "--channels-last", "--json", str(out)]) == 0
    assert "channels-last" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["settings"]["channels_last"] is True
    assert [len(m["latency_ms"]["runs"]) for m in result["models"]] == [2, 2]
    assert formats and all(formats)  # the FLOP count and every timed call


class WideStrideConv(OneConv):
    """OneConv whose 'encoder' reaches stride 64 (as NfS-Net's c6): inputs padded to 64."""

    encoder = SimpleNamespace(strides=(1, 64))


def conv_predictor(network: nn.Module, name: str, kind: str) -> Predictor:
    return Predictor(
        network, name=name, kind=kind, uncertainty_source="", source=Path(name), home=None
    )


def test_each_model_is_padded_to_its_own_multiple() -> None:
    """A model is timed on the input predict would give it, not on one padded for another
    model's larger multiple; the report says which size each ran at and marks a ratio of
    two models that ran at different sizes."""
    predictors = [
        conv_predictor(WideStrideConv(), "wide", "ensemble"),
        conv_predictor(OneConv(), "student", "student"),
        conv_predictor(OneConv(), "baseline", "baseline"),
    ]
    result = benchmark(predictors, (30, 50), repeats=1, warmup=0)
    sizes = {m.name: m.input_size for m in result.models}
    assert sizes == {"wide": (64, 64), "student": (32, 64), "baseline": (32, 64)}
    for m in result.models:  # the FLOPs of the size it ran at: it really ran there
        assert m.flops == 2 * CLASSES * 3 * 3 * 3 * m.input_size[0] * m.input_size[1]
    same = {(r.numerator, r.denominator): r.same_input_size for r in result.ratios}
    assert same == {("wide", "student"): False, ("student", "baseline"): True}

    data = to_json(result)
    assert data["settings"]["size"] == [30, 50]
    assert data["settings"]["input_sizes"] == {
        "wide": [64, 64], "student": [32, 64], "baseline": [32, 64]
    }  # fmt: skip
    assert [m["input_size"] for m in data["models"]] == [[64, 64], [32, 64], [32, 64]]
    assert [r["same_input_size"] for r in data["ratios"]] == [False, True]

    text = format_result(result)
    assert (
        "batch 1 x 3 x 30 x 50 (padded per model, as predict pads for it: 64 x 64 for wide; "
        "32 x 64 for student, baseline) on cpu"
    ) in text
    wide, head = (line for line in text.splitlines() if " / " in line)
    assert "*" in wide and "*" not in head
    assert f"* {SIZE_NOTE}." in text


def test_bench_line_says_what_size_each_model_ran_at() -> None:
    """The experiment's latency note gives the padded size(s), per model where they
    differ, and still reads results.json written with one input size or none."""
    settings = {
        "size": [90, 150], "batch": 1, "repeats": 5, "device": "cpu",
        "device_name": "AMD EPYC", "threads": 2, "torch": "2.13.0+cpu",
    }  # fmt: skip

    def line(**sizes: object) -> str:
        results = {
            "table": {"metrics": ["latency_ms"]},
            "checks": [],
            "bench": {"settings": {**settings, **sizes}},
        }
        text = _bench_line(results)
        assert text is not None
        return text

    same = line(input_sizes={"student": [96, 160], "baseline": [96, 160]})
    assert "batch 1 x 3 x 90 x 150 (padded to 96 x 160) on cpu" in same
    assert SIZE_NOTE not in same
    mixed = line(input_sizes={"teacher": [128, 192], "student": [96, 160]})
    assert (
        "batch 1 x 3 x 90 x 150 (padded per model, as predict pads for it: 128 x 192 for "
        "teacher; 96 x 160 for student) on cpu"
    ) in mixed
    assert f"the ratio of the medians above; {SIZE_NOTE}." in mixed
    # Older results.json: one padded size for all models, or none recorded.
    assert "batch 1 x 3 x 90 x 150 (padded to 96 x 160) on cpu" in line(input_size=[96, 160])
    assert "batch 1 x 3 x 90 x 150 on cpu" in line()


def test_models_of_one_name_keep_their_own_input_size() -> None:
    """Two checkpoints both named "best" are told apart, as evaluate tells them apart: each
    keeps its own padded size in the settings."""
    predictors = [
        conv_predictor(WideStrideConv(), "best", "student"),
        conv_predictor(OneConv(), "best", "baseline"),
    ]
    result = benchmark(predictors, (30, 50), repeats=1, warmup=0)
    assert [m.name for m in result.models] == ["best", "best_2"]
    assert to_json(result)["settings"]["input_sizes"] == {"best": [64, 64], "best_2": [32, 64]}


def test_latency_statistics_of_the_timed_calls() -> None:
    """median, quartiles, min, max and throughput of several calls (one call hides them
    all). Expected values by hand: sorted runs 1, 2, 3, 5, 100; numpy's linear quartiles of
    five values are the 2nd and 4th."""
    runs = [5.0, 1.0, 3.0, 100.0, 2.0]
    model = ModelBench("m", "m", "baseline", 1, "", 0, 0.0, 2, (32, 32), runs)
    assert model.latency() == {"median": 3.0, "q25": 2.0, "q75": 5.0, "min": 1.0, "max": 100.0}
    assert model.throughput() == pytest.approx(2 / 0.003)  # batch 2 at the median, 3 ms


def test_ratio_goals_are_met_on_the_bound() -> None:
    """teacher / student >= passes and student / baseline <= 1.02, both inclusive."""

    def model(name: str, kind: str, runs: list[float], passes: int = 1) -> ModelBench:
        return ModelBench(name, name, kind, passes, "", 0, 0.0, 1, (32, 32), runs)

    ratios = compute_ratios(
        [
            model("ens", "ensemble", [100.0, 150.0], passes=2),
            model("student", "student", [51.0, 76.5]),
            model("baseline", "baseline", [50.0, 75.0]),
        ]
    )
    assert [r.value for r in ratios] == [100.0 / 51.0, 51.0 / 50.0]
    assert not ratios[0].met  # 1.96 < 2
    assert ratios[1].value == 1.02 and ratios[1].met
    exact = compute_ratios(
        [model("ens", "ensemble", [102.0], passes=2), model("student", "student", [51.0])]
    )
    assert exact[0].value == 2.0 and exact[0].met


@pytest.mark.parametrize("count", [*range(1, 41), 99, 100, 300, 1500])
def test_median_interval_takes_the_ranks_of_the_binomial_bound(count: int) -> None:
    """[x_(k), x_(n+1-k)] with the largest k whose coverage 1 - 2 P(B <= k-1), B ~
    Binomial(n, 1/2), is still >= 0.95 (scipy's binomial, not the code's sum)."""
    from scipy.stats import binom

    values = np.random.default_rng(count).permutation(np.arange(1, count + 1)).astype(float)
    ranks = [k for k in range(1, (count + 1) // 2 + 1) if 2 * binom.cdf(k - 1, count, 0.5) <= 0.05]
    interval = median_interval(values)
    if not ranks:
        assert interval is None and count < 6
    else:  # values are 1..n, so the k-th smallest is k
        k = max(ranks)
        assert interval == (float(k), float(count + 1 - k))
    if count == 10:  # the textbook case: x_(2)..x_(9), coverage 97.9 %
        assert interval == (2.0, 9.0)


def test_median_interval_covers_the_median_as_often_as_it_says() -> None:
    """Drawn 4000 times from a skewed distribution (median log 2), 25 values each, the
    interval [x_(8), x_(18)] holds the true median 95.67 % of the time (1 - 2 P(B <= 7)),
    give or take 1.2 points (3.7 standard errors of 4000 draws)."""
    from scipy.stats import binom

    rng = np.random.default_rng(0)
    held = [
        low <= np.log(2) <= high
        for low, high in (median_interval(rng.exponential(size=25)) for _ in range(4000))
    ]
    coverage = 1 - 2 * binom.cdf(7, 25, 0.5)
    assert abs(np.mean(held) - coverage) < 0.012 and coverage >= 0.95


def test_a_ratio_whose_interval_holds_the_goal_is_unresolved(capsys) -> None:
    """The per-repeat ratios' interval comes with the ratio; where the goal's bound lies
    inside it the run cannot decide the goal, and says so."""

    def model(name: str, kind: str, runs: list[float]) -> ModelBench:
        return ModelBench(name, name, kind, 1, "", 0, 0.0, 1, (32, 32), runs)

    baseline = [100.0] * 10
    student = [97.0, 99.0, 100.0, 101.0, 101.5, 102.5, 103.0, 104.0, 106.0, 110.0]
    ratios = compute_ratios([model("s", "student", student), model("b", "baseline", baseline)])
    (ratio,) = ratios
    assert ratio.value == pytest.approx(1.02) and ratio.met  # the median: (101.5 + 102.5) / 2
    assert ratio.interval == pytest.approx((0.99, 1.06))  # the 2nd and 9th of 10
    assert ratio.unresolved
    text = format_result(BenchResult(SETTINGS, [model("s", "student", student)], ratios))
    assert "0.990..1.060" in text and "yes (unresolved)" in text
    assert "the goal lies inside the interval" in text
    data = to_json(BenchResult(SETTINGS, [], ratios))["ratios"][0]
    assert data["interval_95"] == pytest.approx([0.99, 1.06]) and data["unresolved"] is True
    # A clear margin: the whole interval under the goal.
    clear = compute_ratios(
        [model("s", "student", [v - 10.0 for v in student]), model("b", "baseline", baseline)]
    )
    assert clear[0].interval[1] < 1.02 and not clear[0].unresolved
    # Five repeats give no 95 % interval: shown as "-", never as resolved.
    few = compute_ratios([model("s", "student", student[:5]), model("b", "baseline", baseline[:5])])
    assert few[0].interval is None and not few[0].unresolved
    text = format_result(BenchResult(SETTINGS, [model("s", "student", student[:5])], few))
    assert "fewer than 6 timed calls give no 95% interval" in text


def test_gflops_per_image_are_flops_over_1e9() -> None:
    model = ModelBench("m", "m", "baseline", 1, "", 0, 3.5e9, 1, (32, 32), [1.0])
    assert to_json(BenchResult({}, [model], []))["models"][0]["gflops_per_image"] == 3.5


def test_a_ratio_of_models_at_different_sizes_is_marked() -> None:
    def model(name: str, kind: str, size: tuple[int, int]) -> ModelBench:
        return ModelBench(name, name, kind, 1, "", 0, 0.0, 1, size, [1.0])

    ratios = compute_ratios([model("s", "student", (64, 64)), model("b", "baseline", (32, 64))])
    assert [r.same_input_size for r in ratios] == [False]


def test_the_thread_count_is_restored_after_the_run() -> None:
    predictor = Predictor(
        OneConv(), name="c", kind="baseline", uncertainty_source="", source=Path("c"), home=None
    )
    before = torch.get_num_threads()
    try:
        wanted = 1 if before != 1 else 2
        result = benchmark([predictor], (8, 8), repeats=1, warmup=0, threads=wanted)
        assert result.settings["threads"] == wanted
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_the_cpu_timer_gives_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """perf_counter seconds -> ms (a fake clock: 0.25 s between start and end)."""
    clock = iter([10.0, 10.25])
    monkeypatch.setattr("segdistill.bench.time.perf_counter", lambda: next(clock))
    assert make_timer(torch.device("cpu"))(lambda: None) == pytest.approx(250.0)


class LoggingConv(OneConv):
    """OneConv that logs its name, the thread count and its input at every forward."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: Tensor) -> SegOutput:
        self.log.append((self.name, torch.get_num_threads(), x.clone()))
        return super().forward(x)


def test_timed_calls_are_round_robin_after_untimed_warm_up(monkeypatch) -> None:
    """A fake timer: each call it times logs "timer" and returns a decreasing count, so
    runs_ms tells which timed call each entry is. The warm-up calls are untimed and come
    first; then repeat r of every model, then r + 1; the JSON keeps the runs in call order
    and the printed ratio is numerator / denominator."""
    log: list = []
    ticks = iter(range(100, 0, -1))

    def fake_timer(call):  # noqa: ANN001, ANN202
        log.append(("timer", None, None))
        call()
        return float(next(ticks))

    monkeypatch.setattr("segdistill.bench.make_timer", lambda device: fake_timer)
    predictors = [
        conv_predictor(LoggingConv("s", log), "s", "student"),
        conv_predictor(LoggingConv("b", log), "b", "baseline"),
    ]
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        result = benchmark(predictors, (8, 8), repeats=3, warmup=2, threads=wanted)
    finally:
        torch.set_num_threads(before)
    names = [name for name, _, _ in log]
    flop_count, warm_up, timed = names[:2], names[2:6], names[6:]
    assert flop_count == ["s", "b"]
    assert sorted(warm_up) == ["b", "b", "s", "s"]  # untimed: no "timer" among them
    assert timed == ["timer", "s", "timer", "b"] * 3  # round robin, one timer per call
    # Decreasing ticks 100, 99, ... in call order: s got the 1st, 3rd, 5th.
    student, baseline = result.models
    assert student.runs_ms == [100.0, 98.0, 96.0] and baseline.runs_ms == [99.0, 97.0, 95.0]
    assert to_json(result)["models"][0]["latency_ms"]["runs"] == [100.0, 98.0, 96.0]
    (ratio,) = result.ratios
    assert ratio.value == pytest.approx(np.median(np.array([100, 98, 96]) / [99, 97, 95]))
    assert f"{ratio.value:.3f}" in format_result(result)
    # The thread count asked for is in effect for every call, timed ones included.
    assert {threads for name, threads, _ in log if name != "timer"} == {wanted}
    # Every model gets the same random batch (not a constant one), padded with 0 to 32x32.
    inputs = [x for name, _, x in log if name != "timer"]
    assert all(torch.equal(x, inputs[0]) for x in inputs) and inputs[0].shape == (1, 3, 32, 32)
    assert inputs[0][..., :8, :8].std() > 0.5 and inputs[0][..., 8:, :].abs().sum() == 0


def test_the_cpu_timer_times_the_call_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake clock advances only inside the call: 0.25 s of call -> 250 ms."""
    clock = [10.0]
    monkeypatch.setattr("segdistill.bench.time.perf_counter", lambda: clock[0])

    def call() -> None:
        clock[0] += 0.25

    assert make_timer(torch.device("cpu"))(call) == pytest.approx(250.0)


def test_latency_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    # numpy's linear interpolation, by hand: sorted 1, 2, 3, 10 -> median 2.5,
    # q25 = 1 + 0.75 * (2 - 1) = 1.75, q75 = 3 + 0.25 * (10 - 3) = 4.75.
    model = ModelBench("m", "m", "baseline", 1, "", 0, 0.0, 1, (32, 32), [10.0, 1.0, 3.0, 2.0])
    assert model.latency() == {"median": 2.5, "q25": 1.75, "q75": 4.75, "min": 1.0, "max": 10.0}


def test_cli_bench_passes_its_settings_to_the_run(tmp_path, monkeypatch) -> None:
    import segdistill.bench as bench_module

    seen = {}
    real = bench_module.benchmark

    def recording(predictors, size, batch, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(size=size, batch=batch, **kwargs)
        return real(predictors, size, batch, **{**kwargs, "repeats": 1, "warmup": 0})

    monkeypatch.setattr(bench_module, "benchmark", recording)
    baseline = save_tiny(tmp_path / "baseline.safetensors")
    argv = [str(baseline), "--size", "32x64", "--batch", "2", "--repeats", "7"]
    assert main(["bench", *argv, "--warmup", "3", "--threads", "2", "--channels-last"]) == 0
    assert seen == {
        "size": (32, 64), "batch": 2, "repeats": 7, "warmup": 3, "device": None,
        "threads": 2, "channels_last": True,
    }  # fmt: skip


def test_bench_refuses_to_write_its_json_over_a_benchmarked_weights_file(tmp_path, capsys) -> None:
    """--json naming a source's weights file replaced the trained weights with the JSON
    (exit status 0). `segdistill report` refuses to write over its own input likewise."""
    weights = save_tiny(tmp_path / "run" / "checkpoints" / "best.safetensors")
    before = weights.read_bytes()
    for given in (weights, tmp_path / "run"):  # the weights file, or its run directory
        argv = ["bench", str(given), "--size", "32x32", "--repeats", "1", "--warmup", "0"]
        assert main([*argv, "--json", str(weights)]) == 2
        assert str(weights) in capsys.readouterr().err
        assert weights.read_bytes() == before
