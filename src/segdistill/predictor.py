"""One way to turn any model source into per-pixel class probabilities and uncertainty.

`load_predictor(source)` accepts

- a run directory (its `checkpoints/best.safetensors`, else `last.safetensors`),
- a `.safetensors` weights file written by `segdistill.checkpoints.save_weights`,
- an ensemble directory holding `manifest.json`, or the manifest file itself,

and returns a `Predictor` whose `predict(images)` gives a `Prediction` under `no_grad`.

Uncertainty rules (higher = less certain, always `[B, 1, H, W]` in [0, 1]):

| kind         | when                                             | uncertainty                    |
|--------------|--------------------------------------------------|--------------------------------|
| "student"    | checkpoint with a `scalar` head (DUDES)          | the head's map                 |
| "student"    | checkpoint with a `per_class` head (Holder)      | the head's channel of the      |
|              |                                                  | predicted class (argmax probs) |
| "baseline"   | checkpoint without an uncertainty head           | 1 - max softmax                |
| "mc_dropout" | checkpoint without a head but with `mc_dropout`  | pred_std over `mc_samples`     |
|              | > 0 (an MC-dropout teacher, NfS-SegNet)          | dropout passes (seed 0)        |
| "ensemble"   | ensemble directory / manifest                    | pred_std over the members      |

pred_std is the std of the probability of the class the mean predicts (DUDES), a
population std (Holder eq. 3), at most 0.5. Ensembles and MC dropout also give, when asked
(`entropy_maps`), `extra["entropy"]` (predictive entropy, nats, in [0, log C]) and
`extra["mutual_info"]` (BALD): no command uses them, and they cost about 15 % of an
ensemble's prediction, which the latency benchmarks would count as the teacher's. A
per-class head gives `extra["per_class_mean"]`, the mean of its C channels.
Probabilities are the softmax of a network's logits, or the member / sample mean.

An image's OOD score aggregates `Prediction.ood_map`: `uncertainty`, except for a per-class
head, whose map is Holder & Shafique's eq. 8, the mean over its C channels (their 5.3
detects OOD images from it; `Predictor.ood_source` names the map).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from segdistill.checkpoints import RUN_WEIGHTS, load_segmenter, read_classes, weights_path
from segdistill.data.base import ClassesSpec
from segdistill.defaults import DEFAULT_MC_SAMPLES, SOFTMAX_UNCERTAINTY
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import Segmenter, count_parameters
from segdistill.models.teachers import MANIFEST_FILE, Ensemble, MCDropout, Teacher, member_weights

KINDS = ("student", "baseline", "ensemble", "mc_dropout")
TEACHER_KINDS = ("ensemble", "mc_dropout")  # the kinds that run several passes
UNCERTAINTY_SOURCES = {
    "scalar": "student head (scalar)",
    "per_class": "student head (per-class, predicted class)",
    None: SOFTMAX_UNCERTAINTY,
    "ensemble": "ensemble pred_std",
    "mc_dropout": "MC-dropout pred_std",
}
# The map a per-class head's OOD scores aggregate (Holder & Shafique eq. 8 and 5.3).
PER_CLASS_OOD_SOURCE = "student head (per-class, mean over the classes: Holder eq. 8)"
PER_CLASS_MEAN = "per_class_mean"
# Nominal downsampling of every encoder (ResNet, MobileNetV2, NfS-Net down to c5).
MIN_INPUT_MULTIPLE = 32
# Teacher statistics a Prediction is made of.
_TEACHER_NEEDS = frozenset({"mean_probs", "pred_std"})
_ENTROPY_MAPS = frozenset({"entropy", "mutual_info"})


@dataclass
class Prediction:
    """Per-pixel outputs of one batch.

    probs:       [B, C, H, W] class probabilities (sum to 1 over C).
    uncertainty: [B, 1, H, W] in [0, 1], higher = less certain (see the module rules).
    extra:       further named maps [B, 1, H, W] (e.g. "entropy", "mutual_info").
    """

    probs: Tensor
    uncertainty: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def ood_map(self) -> Tensor:
        """[B, 1, H, W] the map an image's OOD score aggregates: a per-class head's mean
        over the classes (Holder & Shafique eq. 8), else `uncertainty`."""
        return self.extra.get(PER_CLASS_MEAN, self.uncertainty)

    @staticmethod
    def concatenated(parts: Sequence[Prediction]) -> Prediction:
        """The predictions of consecutive batches as one (maps concatenated along B)."""
        return Prediction(
            torch.cat([p.probs for p in parts]),
            torch.cat([p.uncertainty for p in parts]),
            {name: torch.cat([p.extra[name] for p in parts]) for name in parts[0].extra},
        )

    def cropped(self, height: int, width: int) -> Prediction:
        """Every map's top-left height x width (what a padded input's prediction holds of
        the image)."""
        return Prediction(
            self.probs[..., :height, :width],
            self.uncertainty[..., :height, :width],
            {name: x[..., :height, :width] for name, x in self.extra.items()},
        )


def max_softmax_uncertainty(probs: Tensor) -> Tensor:
    """1 - max_c p_c: probs [B, C, H, W] -> [B, 1, H, W]."""
    return 1.0 - probs.amax(dim=1, keepdim=True)


def predicted_class_uncertainty(per_class: Tensor, probs: Tensor) -> Tensor:
    """The per-class map's value at the predicted class (Holder & Shafique's student
    predicts one std per class; the pixel's uncertainty is that of its label).
    per_class, probs: [B, C, H, W] -> [B, 1, H, W]."""
    return per_class.gather(1, probs.argmax(dim=1, keepdim=True))


def has_per_class_head(model: torch.nn.Module) -> bool:
    """Whether `model`'s predictions carry eq. 8's map as their `ood_map`: a segmenter
    with Holder & Shafique's per-class head. False for no head, a scalar head and a
    teacher (an ensemble or MC dropout, whose maps are pred_std)."""
    return isinstance(model, Segmenter) and model.uncertainty_kind == "per_class"


def segmenter_prediction(model: Segmenter, images: Tensor) -> Prediction:
    """A segmenter's prediction by its uncertainty head (scalar, per_class or none)."""
    output = model(images)
    probs = torch.softmax(output.logits.float(), dim=1)
    if output.uncertainty is None:
        return Prediction(probs, max_softmax_uncertainty(probs))
    uncertainty = output.uncertainty.float()
    if not has_per_class_head(model):
        return Prediction(probs, uncertainty)
    return Prediction(
        probs,
        predicted_class_uncertainty(uncertainty, probs),
        {PER_CLASS_MEAN: uncertainty.mean(dim=1, keepdim=True)},
    )


def padded_segmenter_prediction(model: Segmenter, images: Tensor) -> Prediction:
    """`segmenter_prediction` for images float32 [B, 3, H, W] of any H, W: padded as
    `Predictor.predict_padded` pads them, maps cropped back to [B, *, H, W]."""
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images, input_multiple([model]))
    return segmenter_prediction(model, padded).cropped(height, width)


def teacher_prediction(teacher: Teacher, images: Tensor, entropy_maps: bool = False) -> Prediction:
    """An ensemble's or MC-dropout network's prediction: mean probabilities and pred_std;
    with `entropy_maps` also entropy and mutual information as extra maps."""
    maps = _ENTROPY_MAPS if entropy_maps else frozenset()
    signals = teacher.signals(images, _TEACHER_NEEDS | maps)
    extra = {name: signals.require(name) for name in sorted(maps)}
    return Prediction(signals.require("mean_probs"), signals.require("pred_std"), extra)


class Predictor:
    """A model source ready to predict: a segmenter, an ensemble or an MC-dropout teacher.

    name: display name (run / ensemble directory name, or checkpoint stem); kind: one of
    KINDS; uncertainty_source: how `uncertainty` is made (see the module rules); source: what was
    loaded; home: the directory its results belong to (run or ensemble directory), None
    for a loose checkpoint file; model: the underlying nn.Module (a `Segmenter`, or the
    `Ensemble` / `MCDropout` teacher whose networks are `.members` / `.model`); classes:
    the classes its weights were trained on (names, colours, how labels store them), None
    for weights written without them.
    """

    def __init__(
        self,
        model: Segmenter | Ensemble | MCDropout,
        *,
        name: str,
        kind: str,
        uncertainty_source: str,
        source: Path,
        home: Path | None,
        classes: ClassesSpec | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.model = model.eval()
        self.name = name
        self.kind = kind
        self.uncertainty_source = uncertainty_source
        self.source = source
        self.home = home
        self.classes = classes
        self.channels_last = False

    def segmenters(self) -> list[Segmenter]:
        """The networks behind the predictions: the ensemble members, the MC-dropout
        network or the single segmenter."""
        model = self.model
        if isinstance(model, Ensemble):
            return [cast(Segmenter, member) for member in model.members]
        if isinstance(model, MCDropout):
            return [cast(Segmenter, model.model)]
        return [model]

    @property
    def num_classes(self) -> int:
        return self.segmenters()[0].num_classes

    @property
    def members(self) -> int:
        """Networks of an ensemble, else 1 (an MC-dropout model is one network)."""
        return len(self.model.members) if isinstance(self.model, Ensemble) else 1

    @property
    def ood_source(self) -> str:
        """What `Prediction.ood_map` holds, as `uncertainty_source` says what
        `uncertainty` holds, decided by the network's head as `predict` decides it
        (`has_per_class_head`), not by the `uncertainty_source` a caller passed."""
        if has_per_class_head(self.model):
            return PER_CLASS_OOD_SOURCE
        return self.uncertainty_source

    @property
    def passes(self) -> int:
        """Forward passes of one prediction: ensemble members, MC-dropout samples, else 1."""
        return self.model.passes if isinstance(self.model, Teacher) else 1

    def input_files(self) -> list[Path]:
        """The files this predictor was loaded from: its weights file, or an ensemble's
        manifest and its members' weights (outputs must never replace them)."""
        if self.kind == "ensemble":
            return [self.source, *member_weights(self.source)]
        return [self.source]

    def check_not_an_input(self, out: Path, what: str) -> None:
        """ConfigError when `out` is one of `input_files`: writing there would replace the
        weights this predictor was loaded from."""
        for read in self.input_files():
            if read.exists() and out.exists() and read.resolve() == out.resolve():
                raise ConfigError(
                    f"{what} {out} is {read}, which {self.name} was loaded from: writing "
                    "there would replace it; give another file"
                )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of every weight and buffer (of every member), names included:
        the same for the same weights however they were loaded or named, on any device or
        memory format."""
        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(data.numpy().tobytes())
        return digest.hexdigest()

    @property
    def parameters(self) -> int:
        """All parameters (of every member), trainable or frozen."""
        return count_parameters(self.model, trainable_only=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str, channels_last: bool = False) -> Predictor:
        """Move the model to `device` ("cpu", "cuda", "cuda:N"; ConfigError when its CUDA
        is not available). channels_last: hold it, and the images `predict` gets, in the
        channels-last memory format (faster for most networks on a CPU, see
        benchmarks/README.md; the same predictions up to rounding, except that MC dropout
        draws its masks in memory order). The weights stay float32."""
        if isinstance(device, torch.dtype):
            raise TypeError(
                f"Predictor.to takes a device, not the dtype {device}: a predictor holds "
                "float32 weights and takes float32 images"
            )
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # Module.to takes memory_format (its documented signature); torch's stubs omit it.
        self.model.to(default_device(device), memory_format=layout)  # type: ignore[call-overload]
        self.channels_last = channels_last
        return self

    @torch.no_grad()
    def predict(self, images: Tensor, entropy_maps: bool = False) -> Prediction:
        """images float32 [B, 3, H, W] ImageNet-normalised, finite, on `device` ->
        Prediction (a teacher's with its entropy and mutual information maps as `extra`
        when `entropy_maps`). The networks predict in eval mode whatever mode they are in
        (and are left in it): one being fine-tuned predicts as it will after training, and its
        batch-norm statistics are not moved by predicting. An MC-dropout model predicts one
        image per call: it draws its masks (seeded) per call, and in a shared call an
        image's masks would depend on its place in the batch and on the batch size."""
        check_images(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with eval_mode(self.model):
            if isinstance(self.model, MCDropout):
                parts = [
                    teacher_prediction(self.model, image, entropy_maps) for image in images.split(1)
                ]
                return Prediction.concatenated(parts)
            if isinstance(self.model, Teacher):
                return teacher_prediction(self.model, images, entropy_maps)
            return segmenter_prediction(self.model, images)

    def predict_padded(self, images: Tensor, entropy_maps: bool = False) -> Prediction:
        """`predict` for images of any size, as `segdistill predict`, `bench` and the
        exported networks run them: padded at the bottom and right with 0 (the mean colour
        once normalised, as training crops are padded) to a multiple of `input_multiple`,
        every map cropped back to the images' H x W. Sides already multiples predict as
        with `predict`."""
        check_images(images)  # before padding: name the shape the caller gave
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, input_multiple(self.segmenters()))
        return self.predict(padded, entropy_maps).cropped(height, width)

    def __repr__(self) -> str:
        return (
            f"Predictor({self.name!r}, kind={self.kind!r}, members={self.members}, "
            f"uncertainty={self.uncertainty_source!r})"
        )


def input_multiple(networks: Sequence[Segmenter]) -> int:
    """The size multiple inputs are padded to: 32, or the largest encoder stride if larger
    (NfS-Net's c6 is at 64), so every level's grid divides the image exactly."""
    return max(MIN_INPUT_MULTIPLE, *(max(net.encoder.strides) for net in networks))


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """[B, C, H, W] -> [B, C, H', W'] with H', W' the next multiples of `multiple`, padded
    with 0 at the bottom and right (crop outputs back with [..., :H, :W])."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, (-width) % multiple, 0, (-height) % multiple))


def check_images(images: Any) -> None:
    """ValueError (TypeError for what is no tensor) unless `images` is a finite float32
    tensor [B, 3, H, W]: a NaN pixel would make its whole image NaN (the global pooling
    spreads it) and an OOD flag would call that image in-distribution."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], not {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be [B, 3, H, W] (RGB, channels first), not {list(images.shape)}"
        )
    if images.dtype != torch.float32:
        raise ValueError(
            f"images must be float32, ImageNet-normalised (segdistill.data.transforms."
            f"IMAGENET_MEAN and IMAGENET_STD on values in [0, 1]), not {images.dtype}"
        )
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"images {bad[:10]} of the batch hold NaN or infinite values")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode inside, each module's own mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)


def unique_names(predictors: list[Predictor]) -> list[Predictor]:
    """Give repeated names a suffix (_2, _3, ...), in place: names key the results of
    several models (evaluate's, bench's)."""
    taken: set[str] = set()
    for predictor in predictors:
        name, count = predictor.name, 1
        # A suffix another model already has as its name would merge their results.
        while name in taken:
            count += 1
            name = f"{predictor.name}_{count}"
        predictor.name = name
        taken.add(name)
    return predictors


def check_class_count(classes: ClassesSpec, predictor: Predictor, where: str | Path) -> None:
    """ConfigError when the classes file `where` lists another number of classes than the
    predictor predicts."""
    if len(classes.names) != predictor.num_classes:
        raise ConfigError(
            f"{where} lists {len(classes.names)} classes, but {predictor.source} predicts "
            f"{predictor.num_classes}"
        )


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device` when given ("cpu", "cuda" or "cuda:N"), else CUDA when available, else the
    CPU. ConfigError when the device is unknown or its CUDA is not available."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"device must be cpu or cuda, not {str(device)!r}") from error
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, not {str(device)!r}")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r}: CUDA is not available (no GPU, or a CPU-only torch)"
        )
    return chosen


def load_predictor(source: str | Path, mc_samples: int = DEFAULT_MC_SAMPLES) -> Predictor:
    """Load a run directory, weights file or ensemble directory / manifest (module doc).

    mc_samples: dropout passes of an MC-dropout checkpoint (ignored otherwise).
    Raises CheckpointError naming the path when it is none of these.
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"model source {path} does not exist")
    if path.name == MANIFEST_FILE or (path.is_dir() and (path / MANIFEST_FILE).is_file()):
        return _load_ensemble(path if path.is_file() else path / MANIFEST_FILE)
    if path.is_dir() and not any((path / weights).is_file() for weights in RUN_WEIGHTS):
        raise CheckpointError(
            f"{path} is neither a run directory (no {' or '.join(RUN_WEIGHTS)}) nor an "
            f"ensemble directory (no {MANIFEST_FILE})"
        )
    if path.suffix == ".ckpt":  # a run's last.ckpt, the file a newcomer sees first
        raise CheckpointError(
            f"{path} is Lightning's resumable training state, not weights: give the run "
            f"directory ({path.parent.parent}) or its {' or '.join(RUN_WEIGHTS)}"
        )
    return _load_checkpoint(weights_path(path), mc_samples)


def _load_ensemble(manifest: Path) -> Predictor:
    ensemble = Ensemble.from_manifest(manifest)
    # The members trained on one data set (`segdistill ensemble`); the first one's classes.
    classes = read_classes(member_weights(manifest)[0])
    return Predictor(
        ensemble,
        name=manifest.parent.resolve().name,
        kind="ensemble",
        uncertainty_source=UNCERTAINTY_SOURCES["ensemble"],
        source=manifest,
        home=manifest.parent,
        classes=classes,
    )


def _load_checkpoint(weights: Path, mc_samples: int) -> Predictor:
    model, model_config = load_segmenter(weights)
    # RUN/checkpoints/best.safetensors belongs to RUN; a loose file has no home.
    run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else None
    name = run_dir.resolve().name if run_dir is not None else weights.stem
    head = model_config.uncertainty_head
    common: dict[str, Any] = {
        "name": name,
        "source": weights,
        "home": run_dir,
        "classes": read_classes(weights),
    }
    if head is None and model_config.mc_dropout > 0:
        teacher = MCDropout(model, samples=mc_samples, seed=0)
        return Predictor(
            teacher,
            kind="mc_dropout",
            uncertainty_source=UNCERTAINTY_SOURCES["mc_dropout"],
            **common,
        )
    kind = "baseline" if head is None else "student"
    return Predictor(model, kind=kind, uncertainty_source=UNCERTAINTY_SOURCES[head], **common)
