"""`segdistill export`: ONNX / TorchScript parity at another size, outputs, refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill import export as export_module
from segdistill.checkpoints import save_weights
from segdistill.cli import main
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec
from segdistill.errors import CheckpointError, ConfigError
from segdistill.export import (
    CheckResult,
    ExportReport,
    compare,
    export_predictor,
    read_description,
    run_exported,
)
from segdistill.models import build_segmenter
from segdistill.predictor import load_predictor, pad_to_multiple

CLASSES = 5
FIVE_CLASSES = ClassesSpec(
    ("road", "car", "person", "sky", "tree"), np.arange(15, dtype=np.uint8).reshape(5, 3) * 17
)


def save_tiny(
    path: Path, head: str | None = "scalar", arch: str = "deeplabv3plus", mc_dropout: float = 0.0
) -> Path:
    """A tiny segmenter (ResNet-18 at width 0.125) saved as a weights file, with its
    classes."""
    config = ModelConfig(
        arch,
        encoder_options={"width": 0.125},
        uncertainty_head=head,
        mc_dropout=mc_dropout,
    )
    model = build_segmenter(
        arch, config.encoder, CLASSES, head, config.encoder_options, mc_dropout=mc_dropout
    )
    save_weights(path, model, config, FIVE_CLASSES)
    return path


def predictor_outputs(source: Path, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `Predictor.predict` gives for images of any size: padded, then cropped back."""
    height, width = images.shape[-2:]
    prediction = load_predictor(source).predict(pad_to_multiple(images, 32))
    return prediction.probs[..., :height, :width], prediction.uncertainty[..., :height, :width]


def test_onnx_matches_pytorch_at_another_size(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    source = save_tiny(tmp_path / "student.safetensors")
    report = export_predictor(load_predictor(source), "onnx", tmp_path / "student.onnx")

    assert report.check.ok, report.check
    assert report.check.shape[2:] != report.sample_shape[2:]
    assert report.check.max_diff["probs"] <= 1e-4 and report.check.max_diff["uncertainty"] <= 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert [o.name for o in session.get_outputs()] == ["probs", "uncertainty"]
    # Independently of the command's own check: another batch and size again.
    images = torch.randn(1, 3, 45, 77)
    probs, uncertainty = run_exported(report.path, "onnx", images)
    ref_probs, ref_uncertainty = predictor_outputs(source, images)
    assert probs.shape == (1, CLASSES, 45, 77) and uncertainty.shape == (1, 1, 45, 77)
    assert (probs - ref_probs).abs().max() <= 1e-4
    assert (uncertainty - ref_uncertainty).abs().max() <= 1e-4
    description = read_description(report.path, "onnx")
    assert description["num_classes"] == CLASSES and description["kind"] == "student"
    assert description["class_names"] == list(FIVE_CLASSES.names)
    assert description["class_colors"] == FIVE_CLASSES.colors.tolist()


@pytest.mark.parametrize(("head", "outputs"), [("scalar", "probs"), ("per_class", "labels")])
def test_torchscript_matches_pytorch_at_another_size(tmp_path, head, outputs) -> None:
    source = save_tiny(tmp_path / "net.safetensors", head=head)
    report = export_predictor(load_predictor(source), "torchscript", outputs=outputs)

    assert report.path == tmp_path / "net.torchscript.pt"
    assert report.check.ok, report.check
    assert report.check.shape[2:] != report.sample_shape[2:]
    assert report.check.shape[2] % 32 and report.check.shape[3] % 32  # the padding runs
    images = torch.randn(2, 3, 50, 33)
    first, uncertainty, *rest = run_exported(report.path, "torchscript", images)
    ref_probs, ref_uncertainty = predictor_outputs(source, images)
    assert (uncertainty - ref_uncertainty).abs().max() <= 1e-4
    if outputs == "labels":
        assert first.dtype == torch.int64 and first.shape == (2, 50, 33)
        assert torch.equal(first, ref_probs.argmax(dim=1))
    else:
        assert (first - ref_probs).abs().max() <= 1e-4
    description = read_description(report.path, "torchscript")
    if head == "per_class":
        # Holder's eq. 8 map, the mean of the per-class head over the classes, computed here
        # from the network's raw head output with numpy.
        (ood_map,) = rest
        network = load_predictor(source).model
        with torch.no_grad():
            head_maps = network(pad_to_multiple(images, 32)).uncertainty[..., :50, :33]
        expected = head_maps.numpy().mean(axis=1, keepdims=True)
        assert ood_map.shape == (2, 1, 50, 33)
        np.testing.assert_allclose(ood_map.numpy(), expected, atol=1e-5)
        assert description["outputs"] == [outputs, "uncertainty", "ood_map"]
        assert "Holder eq. 8" in description["ood_source"]
        assert description["uncertainty_source"] == "student head (per-class, predicted class)"
        assert "ood_map" in report.check.max_diff
    else:
        assert rest == []
        assert description["outputs"] == [outputs, "uncertainty"]
        assert description["ood_source"] == description["uncertainty_source"]


def test_a_torchscript_files_outputs_need_no_gradient(tmp_path) -> None:
    source = save_tiny(tmp_path / "net.safetensors")
    report = export_predictor(load_predictor(source), "torchscript")
    probs, uncertainty = torch.jit.load(str(report.path))(torch.randn(1, 3, 32, 32))
    assert not probs.requires_grad and not uncertainty.requires_grad
    probs.numpy()  # as a user would, without torch.no_grad()


def test_exporting_leaves_the_callers_network_as_it_was(tmp_path) -> None:
    predictor = load_predictor(save_tiny(tmp_path / "net.safetensors"))
    network = predictor.model
    network.train()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    export_predictor(predictor, "torchscript")
    # A Python user who exports and then fine-tunes finds the network as it was.
    assert network.training
    assert all(parameter.requires_grad for parameter in network.parameters())
    assert all(torch.equal(value, before[name]) for name, value in network.state_dict().items())


def test_a_killed_exports_folder_is_matched_by_the_file_name_literally(tmp_path) -> None:
    """`[1]` in a file name is no glob pattern: the export of net[1].onnx removes its own
    stale folder, not that of net1.onnx (another export in progress)."""
    other = tmp_path / ".net1.onnx.abc.export"
    own = tmp_path / ".net[1].onnx.xyz.export"
    other.mkdir()
    own.mkdir()
    with export_module._staging_folder(tmp_path / "net[1].onnx") as staging:
        assert staging.parent == tmp_path
    assert other.exists() and not own.exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_export_leaves_the_previous_file_whole(tmp_path, monkeypatch, fmt) -> None:
    source = save_tiny(tmp_path / "net.safetensors")
    first = export_predictor(load_predictor(source), fmt)
    before = first.path.read_bytes()

    # A kill in the middle of writing: part of the file is there, then the process stops.
    def killed_onnx(module, args, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    def killed_torchscript(module, file, **kwargs):  # noqa: ANN001, ANN003, ANN202
        file.write(b"partial")
        raise KeyboardInterrupt

    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", killed_onnx)
    else:
        monkeypatch.setattr(torch.jit, "save", killed_torchscript)
    with pytest.raises(KeyboardInterrupt):
        export_predictor(load_predictor(source), fmt)
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["net.safetensors", first.path.name]
    )


def test_ensembles_and_mc_dropout_are_refused(tmp_path) -> None:
    members = [save_tiny(tmp_path / "ens" / f"m{i}.safetensors", head=None) for i in range(2)]
    manifest = {"members": [{"checkpoint": path.name} for path in members]}
    (tmp_path / "ens" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="ensemble of 2 networks; export is for single"):
        export_predictor(load_predictor(tmp_path / "ens"), "onnx")
    mc = save_tiny(tmp_path / "mc.safetensors", head=None, mc_dropout=0.2)
    with pytest.raises(CheckpointError, match="MC-dropout"):
        export_predictor(load_predictor(mc), "torchscript")
    with pytest.raises(ConfigError, match="--opset applies to ONNX only"):
        export_predictor(load_predictor(members[0]), "torchscript", opset=18)
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.pt"))


def test_pyramid_pooling_is_refused_for_onnx(tmp_path) -> None:
    source = save_tiny(tmp_path / "psp.safetensors", arch="pspnet")
    with pytest.raises(ConfigError, match="--format torchscript"):
        export_predictor(load_predictor(source), "onnx")


def test_compare_allows_only_near_ties() -> None:
    probs = torch.tensor([0.5, 0.49995, 0.00005]).reshape(1, 3, 1, 1).repeat(1, 1, 1, 2)
    probs[..., 1] = torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1)
    uncertainty = torch.zeros(1, 1, 1, 2)
    # Pixel 0 is a near tie (class 1 within 1e-4 of class 0), pixel 1 is not.
    tie = (torch.tensor([[[1, 0]]]), uncertainty + torch.tensor([0.3, 0.0]))
    diff, ties, ok = compare((probs, uncertainty), tie, "labels", 1e-4)
    assert ok and ties == 1 and diff == {"labels": 0.0, "uncertainty": 0.0}
    wrong = (torch.tensor([[[0, 1]]]), uncertainty)
    diff, _, ok = compare((probs, uncertainty), wrong, "labels", 1e-4)
    assert not ok and diff["labels"] == 1.0
    off = (probs + 2e-4, uncertainty)
    assert not compare((probs, uncertainty), off, "probs", 1e-4)[2]
    # The OOD map does not depend on the class: compared at the near tie too.
    ood_map = torch.zeros(1, 1, 1, 2)
    shifted = (*tie, ood_map + torch.tensor([2e-4, 0.0]))
    diff, _, ok = compare((probs, uncertainty, ood_map), shifted, "labels", 1e-4)
    assert not ok and diff["ood_map"] == pytest.approx(2e-4)
    # The uncertainty at a pixel that is no tie must match too.
    uncertain = (probs, uncertainty + torch.tensor([0.0, 2e-4]))
    diff, ties, ok = compare((probs, uncertainty), uncertain, "probs", 1e-4)
    assert not ok and ties == 0 and diff["uncertainty"] == pytest.approx(2e-4)
    # A class 2e-4 below the top one is beyond a tolerance of 1e-4: no near tie.
    close = torch.tensor([0.5, 0.4998, 0.0002]).reshape(1, 3, 1, 1)
    zero = torch.zeros(1, 1, 1, 1)
    diff, _, ok = compare((close, zero), (torch.tensor([[[1]]]), zero), "labels", 1e-4)
    assert not ok and diff["labels"] == 1.0
    with pytest.raises(CheckpointError, match="2 outputs where the network has 3"):
        compare((probs, uncertainty, ood_map), tie, "labels", 1e-4)


def test_cli_exits_non_zero_when_the_check_fails(tmp_path, monkeypatch, capsys) -> None:
    source = save_tiny(tmp_path / "s.safetensors")
    check = CheckResult((3, 3, 91, 163), {"probs": 0.5, "uncertainty": 0.0}, 0, 1e-4, False)
    outputs = ("probs", "uncertainty")
    report = ExportReport(tmp_path / "s.onnx", "onnx", 20, outputs, (2, 3, 64, 128), check)
    monkeypatch.setattr(export_module, "export_predictor", lambda *a, **k: report)
    assert main(["export", str(source), "--format", "onnx"]) == 1
    out = capsys.readouterr().out
    assert "outputs probs, uncertainty;" in out
    assert "probs 5.00e-01" in out and "(tolerance 0.0001): FAILED\n" in out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_fails_its_check_writes_nothing(tmp_path, monkeypatch, capsys, fmt) -> None:
    """A failed check printed FAILED (exit 1) after the file had replaced the previous,
    good one: the default place (checkpoints/best.onnx) then held a file known to differ."""
    source = save_tiny(tmp_path / "net.safetensors")
    first = export_predictor(load_predictor(source), fmt)
    before = first.path.read_bytes()
    checked = []

    def failing(reference, exported, outputs, atol):  # noqa: ANN001, ANN202
        checked.append(len(exported))
        return {"probs": 0.5, "uncertainty": 0.0}, 0, False

    monkeypatch.setattr(export_module, "compare", failing)
    report = export_predictor(load_predictor(source), fmt)
    assert checked and not report.check.ok and not report.written
    assert first.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["net.safetensors", first.path.name]
    )
    other = tmp_path / "new" / f"n{first.path.suffix}"
    assert main(["export", str(source), "--format", fmt, "--out", str(other)]) == 1
    out = capsys.readouterr().out
    assert f"exported (not written: the check below failed) {other}" in out
    assert "FAILED" in out and f"{other} was left as it was" in out
    assert not other.exists() and not list(other.parent.iterdir())


def test_an_export_removes_the_staging_folder_a_killed_one_left(tmp_path) -> None:
    source = save_tiny(tmp_path / "net.safetensors")
    stale = tmp_path / ".net.onnx.x1y2z3.export"  # as a SIGKILL during an export leaves it
    stale.mkdir()
    (stale / "net.onnx").write_bytes(b"partial")
    report = export_predictor(load_predictor(source), "onnx")
    assert report.check.ok and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.safetensors"]


def test_an_opset_the_exporter_cannot_write_is_refused_not_replaced(tmp_path, caplog) -> None:
    pytest.importorskip("onnxruntime")
    source = save_tiny(tmp_path / "net.safetensors")
    with pytest.raises(ConfigError, match="--opset 17: .* wrote opset 18; nothing was written"):
        export_predictor(load_predictor(source), "onnx", tmp_path / "old.onnx", opset=17)
    assert list(tmp_path.iterdir()) == [source]
    # The error says it in one line: the converter's own log and traceback stay quiet.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    report = export_predictor(load_predictor(source), "onnx", tmp_path / "new.onnx", opset=18)
    assert report.opset == 18 and report.check.ok


def test_the_description_ties_the_file_to_its_weights_and_names_classes(tmp_path, capsys) -> None:
    source = save_tiny(tmp_path / "net.safetensors")
    predictor = load_predictor(source)
    report = export_predictor(predictor, "torchscript", tmp_path / "net.pt")
    description = read_description(report.path, "torchscript")
    assert description["weights"] == predictor.fingerprint()
    assert "higher = less certain" in description["uncertainty"]
    # What a deployment normalises its images with: the ImageNet mean and std, by hand.
    assert description["mean"] == [0.485, 0.456, 0.406]
    assert description["std"] == [0.229, 0.224, 0.225]
    # --classes names the classes of weights written without them; a wrong count is refused.
    classes = tmp_path / "classes.yaml"
    entries = "".join(f"  - {{name: k{k}, color: [{k}, {k}, {k}]}}\n" for k in range(CLASSES))
    classes.write_text(f"classes:\n{entries}")
    argv = ["export", str(source), "--format", "torchscript", "--out", str(tmp_path / "c.pt")]
    assert main([*argv, "--classes", str(classes)]) == 0
    named = read_description(tmp_path / "c.pt", "torchscript")["class_names"]
    assert named == [f"k{k}" for k in range(CLASSES)]
    classes.write_text("classes: [{name: a, color: [0, 0, 0]}]\n")
    assert main([*argv, "--classes", str(classes)]) == 2
    assert "lists 1 classes, but" in capsys.readouterr().err


def test_compare_takes_the_largest_absolute_difference() -> None:
    """One pixel off by -2e-4 (below PyTorch) fails the check for every float output: the
    largest |difference|, not a mean over the pixels nor a signed difference."""
    probs = torch.tensor([0.7, 0.2, 0.1]).reshape(1, 3, 1, 1).repeat(1, 1, 2, 2)
    uncertainty = torch.full((1, 1, 2, 2), 0.5)
    ood_map = torch.full((1, 1, 2, 2), 0.5)
    low = torch.zeros(1, 1, 2, 2)
    low[0, 0, 1, 1] = -2e-4
    reference = (probs, uncertainty, ood_map)
    for index, name in enumerate(["probs", "uncertainty", "ood_map"]):
        exported = list(reference)
        exported[index] = exported[index] + low
        diff, ties, ok = compare(reference, tuple(exported), "probs", 1e-4)
        assert not ok and ties == 0, name
        assert diff[name] == pytest.approx(2e-4, rel=1e-4), name


def test_the_check_compares_with_pytorch_within_the_tolerance_asked(tmp_path, monkeypatch) -> None:
    """check_export runs the file on a random input and compares it with PyTorch at the
    tolerance it is given: an exported file (faked here) whose probabilities differ by
    5e-4 at one pixel fails at atol 1e-4 and passes at 1e-3."""
    config = ModelConfig(encoder_options={"width": 0.125}, uncertainty_head="scalar")
    network = build_segmenter(
        config.arch, config.encoder, CLASSES, "scalar", config.encoder_options
    ).eval()
    module = export_module.ExportModule(network)
    inputs = []

    def fake_exported(path, fmt, images):  # noqa: ANN001, ANN202
        inputs.append(images)
        with torch.no_grad():
            probs, uncertainty = module(images)
        probs = probs.clone()
        probs[0, 0, 0, 0] -= 5e-4
        return probs, uncertainty

    monkeypatch.setattr(export_module, "run_exported", fake_exported)
    shape = (2, 3, 27, 37)
    strict = export_module.check_export(tmp_path / "f", "onnx", module, shape, atol=1e-4)
    assert not strict.ok and strict.max_diff["probs"] == pytest.approx(5e-4, rel=1e-3)
    loose = export_module.check_export(tmp_path / "f", "onnx", module, shape, atol=1e-3)
    assert loose.ok and loose.atol == 1e-3
    assert inputs[0].shape == shape and inputs[0].std() > 0.5  # random, not constant


def test_cli_atol_reaches_the_check(tmp_path, monkeypatch) -> None:
    """--atol is the tolerance the check applies, not the default."""
    source = save_tiny(tmp_path / "net.safetensors")
    atols = []

    def recording(path, fmt, module, shape, atol=1e-4):  # noqa: ANN001, ANN202
        atols.append(atol)
        return CheckResult(tuple(shape), {"probs": 0.0, "uncertainty": 0.0}, 0, atol, True)

    monkeypatch.setattr(export_module, "check_export", recording)
    out = tmp_path / "net.pt"
    argv = ["export", str(source), "--format", "torchscript", "--out", str(out)]
    assert main([*argv, "--atol", "0.03"]) == 0
    assert atols == [0.03]


def test_a_network_in_train_mode_is_exported_in_eval_mode(tmp_path) -> None:
    """A caller's network left in train mode (batch norm on batch statistics) is exported
    as it predicts in eval mode; the check, run on the same module, would not notice."""
    source = save_tiny(tmp_path / "net.safetensors")
    predictor = load_predictor(source)
    predictor.model.train()
    report = export_predictor(predictor, "torchscript", tmp_path / "net.pt")
    images = torch.randn(1, 3, 32, 32)
    probs, uncertainty = run_exported(report.path, "torchscript", images)
    ref_probs, ref_uncertainty = predictor_outputs(source, images)  # a fresh, eval network
    assert (probs - ref_probs).abs().max() <= 1e-4
    assert (uncertainty - ref_uncertainty).abs().max() <= 1e-4


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_out_file_whose_folder_cannot_be_written_is_a_one_line_error(tmp_path, capsys) -> None:
    """/proc takes no new entry (root included): a stand-in for a read-only mount or a
    folder without write permission. tempfile.mkdtemp's FileNotFoundError for the staging
    folder came out of main as a traceback (exit status 1), where `report --out` says
    `error: cannot write PATH` with exit status 2."""
    source = save_tiny(tmp_path / "s.safetensors")
    out = Path("/proc/segdistill-cannot-be-written.onnx")
    try:
        code = main(["export", str(source), "--format", "torchscript", "--out", str(out)])
    except SystemExit as exit_info:  # refused when parsed: as good
        code = exit_info.code
    assert code == 2
    error = capsys.readouterr().err
    assert str(out) in error and "Traceback" not in error


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_refuses_to_write_over_the_weights_it_exports(tmp_path, capsys, fmt) -> None:
    """--out naming the source's own weights file replaced the trained weights with the
    exported file (exit status 0): the run could no longer be evaluated, predicted or
    exported again. `segdistill report` refuses to write over its own input likewise."""
    source = save_tiny(tmp_path / "run" / "checkpoints" / "best.safetensors")
    before = source.read_bytes()
    for given in (source, tmp_path / "run"):  # the weights file, or its run directory
        argv = ["export", str(given), "--format", fmt, "--out", str(source)]
        assert main(argv) == 2
        assert str(source) in capsys.readouterr().err
        assert source.read_bytes() == before
