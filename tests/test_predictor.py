"""load_predictor: every source kind, the uncertainty rule of each, and bad sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.checkpoints import save_weights
from segdistill.config import ModelConfig
from segdistill.data.base import ClassesSpec
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import Segmenter, build_segmenter
from segdistill.models.teachers import Ensemble
from segdistill.ood_detector import ImageOODDetector
from segdistill.predictor import (
    PER_CLASS_OOD_SOURCE,
    UNCERTAINTY_SOURCES,
    Predictor,
    default_device,
    input_multiple,
    load_predictor,
    pad_to_multiple,
    unique_names,
)

CLASSES = 4
TINY = {"width": 0.125}
ENSEMBLE_CLASSES = ClassesSpec(("a", "b", "c", "d"), np.arange(12, dtype=np.uint8).reshape(4, 3))


def save_model(
    path: Path,
    head: str | None = None,
    mc_dropout: float = 0.0,
    classes: int = CLASSES,
    spec: ClassesSpec | None = None,
) -> torch.nn.Module:
    """A tiny random DeepLabV3+ written to `path` (a .safetensors file), with the classes
    `spec` when given."""
    config = ModelConfig(encoder_options=TINY, uncertainty_head=head, mc_dropout=mc_dropout)
    model = build_segmenter(
        "deeplabv3plus",
        "resnet18",
        classes,
        uncertainty_head=head,
        encoder_options=TINY,
        mc_dropout=mc_dropout,
    )
    save_weights(path, model, config, spec)
    return model.eval()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directories for each head, an MC-dropout run and a 2-member ensemble."""
    root = tmp_path_factory.mktemp("zoo")
    for head in ("scalar", "per_class", None):
        save_model(root / f"run_{head}" / "checkpoints" / "best.safetensors", head)
    save_model(root / "mc" / "checkpoints" / "last.safetensors", mc_dropout=0.3)
    members = []
    for i in range(2):
        save_model(root / "ens" / f"member_{i}.safetensors", spec=ENSEMBLE_CLASSES)
        members.append({"checkpoint": f"member_{i}.safetensors"})
    (root / "ens" / "manifest.json").write_text(json.dumps({"members": members}))
    return root


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 48)


def test_scalar_head_gives_its_map(zoo: Path, images: torch.Tensor) -> None:
    predictor = load_predictor(zoo / "run_scalar")
    output = predictor.model(images)
    prediction = predictor.predict(images)
    assert (predictor.kind, predictor.name, predictor.members) == ("student", "run_scalar", 1)
    assert predictor.uncertainty_source == "student head (scalar)"
    assert predictor.home == zoo / "run_scalar"
    torch.testing.assert_close(prediction.probs, output.logits.softmax(1))
    torch.testing.assert_close(prediction.uncertainty, output.uncertainty)


def test_per_class_head_gathers_the_predicted_class(zoo: Path, images: torch.Tensor) -> None:
    predictor = load_predictor(zoo / "run_per_class" / "checkpoints" / "best.safetensors")
    output = predictor.model(images)
    prediction = predictor.predict(images)
    assert predictor.kind == "student" and predictor.name == "run_per_class"
    labels = output.logits.argmax(1)
    expected = torch.stack(
        [
            output.uncertainty[b, labels[b], torch.arange(32)[:, None], torch.arange(48)]
            for b in range(2)
        ]
    )
    assert prediction.uncertainty.shape == (2, 1, 32, 48)
    torch.testing.assert_close(prediction.uncertainty[:, 0], expected)
    per_class_mean = output.uncertainty.detach().numpy().mean(axis=1, keepdims=True)
    np.testing.assert_allclose(prediction.extra["per_class_mean"].numpy(), per_class_mean, 1e-6)
    # Holder & Shafique score OOD images from eq. 8's map, the mean over the classes.
    np.testing.assert_allclose(prediction.ood_map.numpy(), per_class_mean, rtol=1e-6)
    assert predictor.ood_source == PER_CLASS_OOD_SOURCE != predictor.uncertainty_source


@pytest.mark.parametrize("source", ["run_scalar", "run_None", "ens", "mc"])
def test_other_models_score_ood_images_from_their_uncertainty(
    zoo: Path, images: torch.Tensor, source: str
) -> None:
    predictor = load_predictor(zoo / source, mc_samples=2)
    prediction = predictor.predict(images)
    assert prediction.ood_map is prediction.uncertainty
    assert predictor.ood_source == predictor.uncertainty_source


@pytest.mark.parametrize(
    ("head", "named"), [("scalar", "per_class"), ("per_class", "scalar"), (None, "per_class")]
)
def test_ood_source_follows_the_network_not_the_name_it_was_given(
    tmp_path: Path, images: torch.Tensor, head: str | None, named: str
) -> None:
    """A Predictor built directly with another head's uncertainty_source names the map its
    predictions' ood_map holds, as a loaded one does."""
    model = save_model(tmp_path / "model.safetensors", head)
    predictor = Predictor(
        model,
        name="m",
        kind="student",
        uncertainty_source=UNCERTAINTY_SOURCES[named],
        source=tmp_path / "model.safetensors",
        home=None,
    )
    prediction = predictor.predict(images)
    if head == "per_class":
        assert prediction.ood_map is not prediction.uncertainty
        assert predictor.ood_source == PER_CLASS_OOD_SOURCE
    else:
        assert prediction.ood_map is prediction.uncertainty
        assert predictor.ood_source == predictor.uncertainty_source


def test_baseline_is_one_minus_max_softmax(zoo: Path, images: torch.Tensor) -> None:
    predictor = load_predictor(zoo / "run_None")
    probs = predictor.model(images).logits.softmax(1)
    prediction = predictor.predict(images)
    assert predictor.kind == "baseline" and predictor.uncertainty_source == "1 - max softmax"
    torch.testing.assert_close(prediction.uncertainty, 1 - probs.max(1, keepdim=True).values)
    assert ((prediction.uncertainty >= 0) & (prediction.uncertainty <= 1)).all()


@pytest.mark.parametrize("source", ["ens", "ens/manifest.json"])
def test_ensemble_uses_teacher_pred_std(zoo: Path, images: torch.Tensor, source: str) -> None:
    predictor = load_predictor(zoo / source)
    assert (predictor.kind, predictor.name, predictor.members) == ("ensemble", "ens", 2)
    assert predictor.home == zoo / "ens" and predictor.num_classes == CLASSES
    reference = Ensemble.from_manifest(zoo / "ens")
    signals = reference.signals(images, {"mean_probs", "pred_std", "entropy", "mutual_info"})
    prediction = predictor.predict(images, entropy_maps=True)
    torch.testing.assert_close(prediction.uncertainty, signals.pred_std)
    torch.testing.assert_close(prediction.probs, signals.mean_probs)
    torch.testing.assert_close(prediction.extra["entropy"], signals.entropy)
    torch.testing.assert_close(prediction.extra["mutual_info"], signals.mutual_info)
    # Without them (what the commands and the benchmarks run): the same maps, no extras.
    plain = predictor.predict(images)
    assert plain.extra == {}
    torch.testing.assert_close(plain.uncertainty, prediction.uncertainty, rtol=0, atol=0)
    torch.testing.assert_close(plain.probs, prediction.probs, rtol=0, atol=0)
    assert predictor.parameters == sum(p.numel() for p in reference.parameters())
    assert predictor.passes == 2  # one pass per member, as predict.json records it
    # The classes its members' weights carry.
    assert predictor.classes is not None and predictor.classes.names == ("a", "b", "c", "d")
    assert load_predictor(zoo / "run_scalar").classes is None  # weights without them


def test_mc_dropout_checkpoint_samples_reproducibly(zoo: Path, images: torch.Tensor) -> None:
    predictor = load_predictor(zoo / "mc", mc_samples=4)  # falls back to last.safetensors
    assert predictor.kind == "mc_dropout" and predictor.name == "mc" and predictor.passes == 4
    first, second = predictor.predict(images, entropy_maps=True), predictor.predict(images)
    torch.testing.assert_close(first.uncertainty, second.uncertainty)
    assert first.uncertainty.max() > 0  # the dropout passes disagree somewhere
    assert set(first.extra) == {"entropy", "mutual_info"} and second.extra == {}
    with pytest.raises(ConfigError, match="samples >= 2"):
        load_predictor(zoo / "mc", mc_samples=1)


def test_mc_dropout_prediction_of_an_image_does_not_depend_on_its_batch(zoo: Path) -> None:
    # Masks are drawn (seeded) per call: in a shared call, an image's masks would be those
    # of its place in the batch, and evaluate's metrics would depend on --batch-size.
    predictor = load_predictor(zoo / "mc", mc_samples=4)
    batch = torch.randn(3, 3, 32, 48)
    together = predictor.predict(batch, entropy_maps=True)
    for i in range(3):
        alone = predictor.predict(batch[i : i + 1], entropy_maps=True)
        torch.testing.assert_close(together.probs[i : i + 1], alone.probs)
        torch.testing.assert_close(together.uncertainty[i : i + 1], alone.uncertainty)
        torch.testing.assert_close(together.extra["entropy"][i : i + 1], alone.extra["entropy"])
    assert together.ood_map is together.uncertainty


@pytest.mark.parametrize(("source", "count"), [("run_scalar", 1), ("mc", 1), ("ens", 2)])
def test_segmenters_are_the_networks_behind_a_source(zoo: Path, source: str, count: int) -> None:
    predictor = load_predictor(zoo / source)
    networks = predictor.segmenters()
    assert len(networks) == count and all(isinstance(n, Segmenter) for n in networks)
    # The very modules that predict (a moved copy would leave the predictor behind).
    owned = {id(m) for m in predictor.model.modules()}
    assert all(id(n) in owned for n in networks)
    assert predictor.num_classes == CLASSES


def test_loose_checkpoint_has_no_home(zoo: Path, tmp_path: Path) -> None:
    path = tmp_path / "student.safetensors"
    save_model(path, "scalar")
    predictor = load_predictor(path)
    assert predictor.name == "student" and predictor.home is None


def test_bad_sources_name_the_path(zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_predictor(tmp_path / "missing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match=r"empty_run is neither a run directory"):
        load_predictor(tmp_path / "empty_run")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_predictor(tmp_path / "junk.safetensors")
    # The resumable state a run directory shows first: said so, not "header too large".
    resumable = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumable.parent.mkdir(parents=True)
    resumable.write_bytes(b"lightning state")
    with pytest.raises(CheckpointError, match=r"last.ckpt is Lightning's resumable training"):
        load_predictor(resumable)


@pytest.mark.parametrize("source", ["run_per_class", "ens"])
def test_channels_last_predicts_the_same_and_can_be_undone(
    zoo: Path, images: torch.Tensor, source: str
) -> None:
    predictor = load_predictor(zoo / source)
    expected = predictor.predict(images)
    convs = [p for p in predictor.model.parameters() if p.dim() == 4]
    predictor.to("cpu", channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert predictor.channels_last  # predict.json's provenance says so
    got = predictor.predict(images)  # given contiguous images, as every caller has them
    torch.testing.assert_close(got.probs, expected.probs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.uncertainty, expected.uncertainty, rtol=1e-4, atol=1e-6)
    predictor.to("cpu")
    assert all(p.is_contiguous() for p in convs) and not predictor.channels_last


def test_fingerprint_follows_the_weights_not_the_name_or_memory_format(
    zoo: Path, tmp_path: Path
) -> None:
    source = zoo / "run_scalar" / "checkpoints" / "best.safetensors"
    fingerprint = load_predictor(source).fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    renamed = tmp_path / "elsewhere.safetensors"
    renamed.write_bytes(source.read_bytes())
    assert load_predictor(renamed).fingerprint() == fingerprint
    assert load_predictor(source).to("cpu", channels_last=True).fingerprint() == fingerprint
    changed = load_predictor(source)
    with torch.no_grad():
        next(changed.model.parameters()).view(-1)[0] += 1e-6
    # Batch-norm statistics are weights as well: other statistics, other predictions.
    statistics = load_predictor(source)
    running_mean = next(b for n, b in statistics.model.named_buffers() if "running_mean" in n)
    running_mean[0] += 1e-3
    assert statistics.fingerprint() != fingerprint
    prints = {changed.fingerprint(), fingerprint}
    prints |= {load_predictor(zoo / name).fingerprint() for name in ("run_per_class", "ens")}
    assert len(prints) == 4
    members = [load_predictor(zoo / "ens" / f"member_{i}.safetensors") for i in range(2)]
    assert members[0].fingerprint() != members[1].fingerprint()


def test_inference_and_the_command_line_start_without_lightning() -> None:
    # Lightning takes seconds to import and only training needs it: loading a model,
    # predicting, evaluating, exporting and `segdistill --help` must not pull it in.
    code = "import sys, segdistill.cli, segdistill.predictor; print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_readmes_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## From Python")[1].split("```python\n")[1].split("```")[0]
    # The demo's student and teacher, as tiny random networks with its 19 classes.
    demo = tmp_path / "runs" / "demo"
    save_model(demo / "students/dudes/checkpoints/best.safetensors", "scalar", classes=19)
    members = []
    for i in range(2):
        save_model(demo / f"teacher/member_0{i}.safetensors", classes=19)
        members.append({"checkpoint": f"member_0{i}.safetensors"})
    (demo / "teacher" / "manifest.json").write_text(json.dumps({"members": members}))
    photo = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    # The photo at its own size (not a multiple of 32): padded for the network, cropped back.
    assert namespace["photo"].classes.shape == namespace["photo"].uncertainty.shape == (100, 150)
    assert namespace["prediction"].probs.shape == (2, 19, 128, 256)
    assert namespace["prediction"].uncertainty.shape == (2, 1, 128, 256)
    assert namespace["results"]["segmentation"]["miou"] is not None
    detector = namespace["detector"]
    assert detector.reference_images == 8 and detector.model == "dudes"
    assert namespace["flagged"].shape == (2,) and namespace["flagged"].dtype == bool
    # The loss reached the student's uncertainty head.
    head = namespace["network"].uncertainty_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_default_device_checks_the_device_it_is_given() -> None:
    assert default_device("cpu") == torch.device("cpu")
    assert default_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for unknown in ("gpu", "meta"):
        with pytest.raises(ConfigError, match=f"device must be cpu or cuda, not '{unknown}'"):
            default_device(unknown)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'cuda:1': CUDA is not available"):
            default_device("cuda:1")


def test_repeated_names_get_a_suffix_no_other_model_has() -> None:
    """a/dudes, b/dudes and c/dudes_2: the second must not become a second "dudes_2",
    which would pool two networks' results under one name."""

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    named = [Named(n) for n in ("dudes", "dudes", "dudes_2", "dudes")]
    unique_names(named)  # type: ignore[arg-type]
    assert [p.name for p in named] == ["dudes", "dudes_2", "dudes_2_2", "dudes_3"]


def test_predict_runs_in_eval_mode_and_leaves_the_modes_as_they_were(
    zoo: Path, images: torch.Tensor
) -> None:
    """The README trains `segmenters()[0].train()`: predict then ran in train mode, so
    its predictions changed with the batch, a batch of one raised, and predicting moved
    the batch-norm statistics (so the fingerprint, and a fitted OOD detector refused it)."""
    predictor = load_predictor(zoo / "run_scalar")
    before, fingerprint = predictor.predict(images), predictor.fingerprint()
    network = predictor.segmenters()[0].train()
    after = predictor.predict(images)
    torch.testing.assert_close(after.probs, before.probs)
    torch.testing.assert_close(predictor.predict(images[:1]).probs, before.probs[:1])
    assert predictor.fingerprint() == fingerprint
    assert network.training and all(module.training for module in network.modules())


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.zeros((1, 3, 8, 8), np.float32), TypeError, "must be a torch.Tensor"),
        (torch.zeros(3, 32, 48), ValueError, r"\[B, 3, H, W\].*not \[3, 32, 48\]"),
        (torch.zeros(1, 32, 48, 3), ValueError, r"not \[1, 32, 48, 3\]"),
        (torch.zeros(1, 3, 32, 48, dtype=torch.uint8), ValueError, "float32.*not torch.uint8"),
        (torch.zeros(1, 3, 32, 48, dtype=torch.float64), ValueError, "not torch.float64"),
    ],
)
def test_predict_names_what_is_wrong_with_the_images(
    zoo: Path, bad: object, error: type, message: str
) -> None:
    predictor = load_predictor(zoo / "run_scalar")
    with pytest.raises(error, match=message):
        predictor.predict(bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):  # checked before padding: the shape given
        predictor.predict_padded(bad)  # type: ignore[arg-type]


def test_a_non_finite_pixel_is_refused_not_turned_into_an_in_distribution_image(
    zoo: Path, images: torch.Tensor
) -> None:
    """One NaN pixel made its whole image NaN (the global pooling spreads it); its OOD
    score was NaN, and NaN > threshold is False: 'in distribution'."""
    predictor = load_predictor(zoo / "ens")
    bad = images.clone()
    bad[1, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"images \[1\] of the batch hold NaN or infinite"):
        predictor.predict(bad)
    detector = ImageOODDetector.fit(torch.rand(20), predictor)
    with pytest.raises(ValueError, match=r"OOD scores \[1\] are NaN"):
        detector.flags(torch.tensor([0.2, float("nan")]))


def test_to_takes_a_device_and_names_an_unavailable_one(zoo: Path) -> None:
    predictor = load_predictor(zoo / "run_scalar")
    with pytest.raises(TypeError, match="takes a device, not the dtype torch.float64"):
        predictor.to(torch.float64)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            predictor.to("cuda")
    assert predictor.to("cpu").device == torch.device("cpu")


def test_an_ensemble_of_members_with_different_class_counts_is_refused(tmp_path: Path) -> None:
    first = save_model(tmp_path / "a.safetensors", classes=4)
    second = save_model(tmp_path / "b.safetensors", classes=6)
    with pytest.raises(ConfigError, match=r"different numbers of classes: \[4, 6\]"):
        Ensemble([first, second])


def test_padding_keeps_the_image_top_left_to_a_multiple_of_the_deepest_stride() -> None:
    """predict_padded (bench, export) pads as `segdistill predict` does: zeros at the bottom
    and right to a multiple of 32, or of 64 for NfS-Net's stride-64 stage; maps cropped
    back to the image."""
    x = torch.randn(1, 3, 40, 70)
    padded = pad_to_multiple(x, 32)
    assert padded.shape == (1, 3, 64, 96) and torch.equal(padded[..., :40, :70], x)
    assert not padded[..., 40:, :].any() and not padded[..., 70:].any()
    nfs = build_segmenter("nfs", "nfsnet", CLASSES, "scalar", encoder_options=TINY).eval()
    predictor = Predictor(
        nfs, name="n", kind="student", uncertainty_source=UNCERTAINTY_SOURCES["scalar"],
        source=Path("n.safetensors"), home=None,
    )  # fmt: skip
    assert input_multiple(predictor.segmenters()) == 64
    got = predictor.predict_padded(x)
    by_hand = torch.zeros(1, 3, 64, 128)
    by_hand[..., :40, :70] = x
    with torch.no_grad():
        output = nfs(by_hand)
    torch.testing.assert_close(got.probs, output.logits.softmax(1)[..., :40, :70])
    torch.testing.assert_close(got.uncertainty, output.uncertainty[..., :40, :70])


def test_predict_padded_crops_every_map_at_the_top_left(zoo: Path) -> None:
    """Each map of a padded prediction is the top-left H x W of the padded image's map: a
    per-class head's uncertainty, probabilities and eq. 8 map alike (a crop from another
    corner would show the padding's predictions at the image's pixels)."""
    predictor = load_predictor(zoo / "run_per_class")
    x = torch.randn(1, 3, 40, 70)
    by_hand = torch.zeros(1, 3, 64, 96)
    by_hand[..., :40, :70] = x
    with torch.no_grad():
        output = predictor.model.eval()(by_hand)
    probs = output.logits.softmax(1)[0, :, :40, :70].numpy()  # [C, H, W]
    per_class = output.uncertainty[0, :, :40, :70].numpy()
    expected = np.take_along_axis(per_class, probs.argmax(0)[None], axis=0)[0]
    assert expected.std() > 1e-3  # a map whose crops differ
    got = predictor.predict_padded(x)
    assert got.uncertainty.shape == (1, 1, 40, 70)
    np.testing.assert_allclose(got.probs[0].numpy(), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.uncertainty[0, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.ood_map[0, 0].numpy(), per_class.mean(0), rtol=1e-5, atol=1e-6)


def test_an_ensembles_fingerprint_covers_every_member(zoo: Path, tmp_path: Path) -> None:
    """Two ensembles that share their first member are other models: a detector fitted for
    one is refused for the other."""
    first = tmp_path / "first"
    second = tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "member_0.safetensors").write_bytes(
            (zoo / "ens" / "member_0.safetensors").read_bytes()
        )
        (folder / "manifest.json").write_text((zoo / "ens" / "manifest.json").read_text())
    (first / "member_1.safetensors").write_bytes(
        (zoo / "ens" / "member_1.safetensors").read_bytes()
    )
    torch.manual_seed(7)
    save_model(second / "member_1.safetensors", spec=ENSEMBLE_CLASSES)
    same, other = load_predictor(first), load_predictor(second)
    assert same.fingerprint() == load_predictor(zoo / "ens").fingerprint()
    assert other.fingerprint() != same.fingerprint()
    detector = ImageOODDetector.fit([0.1, 0.2, 0.3], same)
    detector.check_model(load_predictor(zoo / "ens"), None, "d.json")
    with pytest.raises(ConfigError, match="d.json: .*weights"):
        detector.check_model(other, None, "d.json")
