"""configs/paper/he.yaml built with the code's own builders, without data: He et al.'s
student has no ASPP and no decoder, knowledge adaptation reads the teacher's 256-channel
ASPP features at its output stride 8, and the three KD students ask for one teacher cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from segdistill import train as training
from segdistill.checkpoints import build_model, save_weights
from segdistill.config import SegConfig, replace_values
from segdistill.methods import Adaptation, build_methods
from segdistill.models import count_parameters
from segdistill.pipeline.experiment import LoadedExperiment, load_experiment
from segdistill.pipeline.networks import student_config
from segdistill.pipeline.networks import teacher_config as planned_teacher_config
from segdistill.pipeline.run_dir import RunPaths

HE = Path(__file__).resolve().parents[1] / "configs" / "paper" / "he.yaml"
NUM_CLASSES = 19


def planned(tmp_path: Path) -> tuple[LoadedExperiment, RunPaths, dict]:
    experiment = load_experiment(HE)
    return experiment, RunPaths(tmp_path), {s.name: s for s in experiment.spec.students}


def without_weights(cfg: SegConfig, values: dict | None = None) -> SegConfig:
    """The planned config without the ImageNet weights files (not in the repository)."""
    return replace_values(cfg, {"model.encoder_weights": None, **(values or {})}, "test")


def test_adaptation_is_built_on_the_teachers_aspp_output(tmp_path: Path) -> None:
    """The distillation of the planned `adaptation` student, built as `segdistill distill`
    builds it (`train.build_distillation`: channels read from one forward pass), with the
    teacher at width 0.125: the translator has the channels of the teacher's ASPP output
    (32), not of its backbone output (256), the adapter maps the student's 1280-channel
    last features to them, and a step runs: the translated knowledge of the stride-8 tap
    is at stride 16, the student's resolution (the paper's 8s teacher, 16s student)."""
    experiment, paths, students = planned(tmp_path)
    teacher_cfg = without_weights(
        planned_teacher_config(experiment, paths), {"model.encoder_options.width": 0.125}
    )
    assert (teacher_cfg.model.arch, teacher_cfg.model.encoder) == ("deeplabv3plus", "resnet50")
    torch.manual_seed(0)
    teacher_net = build_model(teacher_cfg.model, NUM_CLASSES)
    weights = tmp_path / "teacher.safetensors"
    save_weights(weights, teacher_net, teacher_cfg.model)

    cfg = without_weights(
        student_config(experiment, paths, students["adaptation"]),
        {"distill.teacher.path": str(weights)},
    )
    assert (cfg.model.arch, cfg.model.encoder) == ("plain", "mobilenetv2")
    assert cfg.distill is not None and cfg.distill.teacher_cache is None
    student = build_model(cfg.model, NUM_CLASSES)
    methods, teacher = training.build_distillation(cfg, student)
    adaptation = methods.methods["adaptation"]
    assert isinstance(adaptation, Adaptation)
    assert (adaptation.teacher_tap, adaptation.student_tap) == ("decoder_aspp", "encoder_out")
    assert adaptation.translator.encoder[0][0].in_channels == 32  # the ASPP's, not 256
    assert adaptation.adapter[0][0].in_channels == 1280
    assert adaptation.adapter[-1][0].out_channels == 32

    images, target = torch.randn(2, 3, 64, 96), torch.randint(0, NUM_CLASSES, (2, 64, 96))
    signals = teacher.signals(images, methods.needs)
    tapped = signals.features["decoder_aspp"]
    assert tapped.shape == (2, 32, 8, 12)  # stride 8
    training.train_translator([tapped], adaptation.translator)
    assert adaptation.translator.encode(tapped).shape[-2:] == (4, 6)  # the student's 16
    terms = methods(student(images), signals, target)
    assert set(terms) == {"loss", "task/ce", "adaptation/adapt", "adaptation/affinity"}
    assert torch.isfinite(terms["loss"])


def test_adaptation_parameters_at_paper_scale(tmp_path: Path) -> None:
    """At full width the he.yaml methods are 7,672,320 parameters (translator 3,542,016,
    adapter 4,130,304, the only trainable part); on the default taps (the teacher's
    2048-channel ResNet-50 output) they were 325,619,712."""
    experiment, paths, students = planned(tmp_path)
    cfg = without_weights(student_config(experiment, paths, students["adaptation"]))
    teacher_cfg = without_weights(planned_teacher_config(experiment, paths))
    with torch.no_grad():
        probe = torch.zeros(1, 3, 64, 64)
        channels = {
            side: {
                name: t.shape[1]
                for name, t in build_model(c.model, NUM_CLASSES).eval()(probe).features.items()
            }
            for side, c in (("student", cfg), ("teacher", teacher_cfg))
        }
    assert channels["teacher"]["decoder_aspp"] == 256
    assert channels["student"]["encoder_out"] == channels["student"]["decoder_out"] == 1280
    assert cfg.distill is not None
    specs = [dataclasses.asdict(method) for method in cfg.distill.methods]  # as train does
    with torch.device("meta"):
        paper = build_methods(specs, NUM_CLASSES, channels["student"], channels["teacher"])
        default_taps = build_methods(
            [{"name": "adaptation"}], NUM_CLASSES, channels["student"], channels["teacher"]
        )
    adaptation = paper.methods["adaptation"]
    assert isinstance(adaptation, Adaptation)
    assert count_parameters(adaptation.translator, trainable_only=False) == 3_542_016
    assert count_parameters(adaptation.adapter) == 4_130_304
    assert count_parameters(paper, trainable_only=False) == 7_672_320
    assert count_parameters(paper) == 4_130_304  # the translator is frozen in stage 2
    assert count_parameters(default_taps, trainable_only=False) == 325_619_712


def test_the_kd_students_plan_one_teacher_cache(tmp_path: Path) -> None:
    """kd_t2, kd_t4 and kd_t6 read the same signals of the same teacher at the same scale,
    so they name one cache folder and ask it for the same contents (built once)."""
    experiment, paths, students = planned(tmp_path)
    wanted = set()
    for name in ("kd_t2", "kd_t4", "kd_t6"):
        distill = student_config(experiment, paths, students[name]).distill
        assert distill is not None
        wanted.add((distill.teacher_cache, tuple(distill.cache_signals or ()), distill.cache_scale))
    assert wanted == {(str(paths.cache("teacher")), ("logits",), 0.5)}
