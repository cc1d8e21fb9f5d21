"""configs/paper/karine.yaml built with the code's own builders, without data: the networks
have the sizes of Karine et al.'s Table 2 (PSPNet-R101 70.43 M, PSPNet-R18 13.07 M)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segdistill.checkpoints import build_model, load_segmenter, save_weights
from segdistill.config import SegConfig, replace_values
from segdistill.errors import ConfigError
from segdistill.models import build_segmenter, count_parameters
from segdistill.pipeline.experiment import load_experiment
from segdistill.pipeline.networks import baseline_config, student_config, teacher_config
from segdistill.pipeline.run_dir import RunPaths

KARINE = Path(__file__).resolve().parents[1] / "configs" / "paper" / "karine.yaml"
NUM_CLASSES = 19


def network_size(cfg: SegConfig) -> int:
    """Parameters of the planned network, built on the meta device (no weights files)."""
    model = replace_values(cfg, {"model.encoder_weights": None}, "test").model
    with torch.device("meta"):
        return count_parameters(build_model(model, NUM_CLASSES))


def test_networks_have_the_sizes_of_table_2(tmp_path: Path) -> None:
    """The student's decoder is 128 channels wide (mmsegmentation's PSPNet-R18), the
    teacher's PSPNet's 512: within 4 % and 7 % of the paper's counts. At 512 channels the
    student was 24 % over; the difference is the decoder's 3x3 bottleneck (its 1024 input
    channels: the 512 of the encoder and 4 x 128 of the pyramid), its batch norm and the
    classifier, per channel dropped: 1024 * 9 + 2 + 19."""
    experiment = load_experiment(KARINE)
    paths = RunPaths(tmp_path)
    teacher = teacher_config(experiment, paths)
    students = [student_config(experiment, paths, s) for s in experiment.spec.students]
    for cfg in [baseline_config(experiment, paths), *students]:
        assert (cfg.model.arch, cfg.model.encoder, cfg.model.decoder_channels) == (
            "pspnet",
            "resnet18",
            128,
        )
        size = network_size(cfg)
        assert abs(size / 13.07e6 - 1) < 0.04
        wide = network_size(replace_values(cfg, {"model.decoder_channels": 512}, "test"))
        assert wide - size == (512 - 128) * (1024 * 9 + 2 + NUM_CLASSES)
    assert (teacher.model.encoder, teacher.model.decoder_channels) == ("resnet101", None)
    assert abs(network_size(teacher) / 70.43e6 - 1) < 0.07


def test_decoder_channels_is_a_checked_model_key_kept_in_the_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.decoder_channels"):
        replace_values(SegConfig(), {"model.decoder_channels": 0}, "test")
    cfg = replace_values(
        SegConfig(),
        {"model.arch": "pspnet", "model.encoder_options.width": 0.25, "model.decoder_channels": 24},
        "test",
    )
    network = build_model(cfg.model, 3)
    assert network.decoder.out_channels == 24
    path = tmp_path / "w.safetensors"
    save_weights(path, network, cfg.model)
    loaded, model_config = load_segmenter(path)
    assert model_config.decoder_channels == 24 and loaded.decoder.out_channels == 24
    default = build_segmenter("pspnet", "resnet18", 3, encoder_options={"width": 0.25})
    assert default.decoder.out_channels == 128  # 512 x width when the key is null
