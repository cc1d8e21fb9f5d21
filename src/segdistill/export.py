"""Export one network to ONNX or TorchScript with all of its outputs, and check the file.

`ExportModule` wraps a `Segmenter` so that the exported graph computes what
`Predictor.predict` computes for it (`segdistill.predictor.segmenter_prediction`):

    images       float32 [B, 3, H, W], RGB scaled to [0, 1] then normalised with the
                 ImageNet mean / std (`segdistill.data.transforms`); any B, H and W
    probs        float32 [B, C, H, W] class probabilities        (outputs="probs")
      or labels  int64   [B, H, W]    class ids (argmax)         (outputs="labels")
    uncertainty  float32 [B, 1, H, W] in [0, 1], higher = less certain (the predictor's
                 rule for the network's head: the scalar head, the per-class head at the
                 predicted class, or 1 - max softmax without a head)
    ood_map      float32 [B, 1, H, W], a per-class head's networks only (Holder &
                 Shafique): the head's mean over the classes (their eq. 8), the map whose
                 image mean `segdistill predict --ood-detector` compares with its threshold

Batch, height and width are dynamic: ONNX through the torch.export-based exporter with
dynamic shapes, TorchScript by tracing (shapes are read from the input at run time). The
padding of `segdistill.predict` (to a multiple of 32, 64 for NfS-Net: `input_multiple`;
cropped back) is part of the graph, so any image size works and gives exactly what
`segdistill predict` gives.

`check_export` runs the file (onnxruntime for ONNX, `torch.jit.load` for TorchScript) on a
random input of another batch size and another height and width than the export sample,
neither a multiple of the padding multiple, and compares with PyTorch: max |difference| <=
atol (1e-4) for probabilities and uncertainty, and the same labels, except at near ties: a
pixel may get another class than PyTorch's argmax when PyTorch's probability of that class
is within atol of the top one (either class is a right answer); such pixels are counted
and left out of the uncertainty comparison (a per-class head's value depends on the
class); `ood_map` does not depend on the class and is compared at every pixel. The file is
written in a folder beside its place and checked there; it replaces the file at `out` only
when the check passes, so neither a killed export nor one that fails its check leaves
anything but the previous file (a failed check says so and writes nothing).

Limits, refused with an error that says why: ensembles and MC-dropout teachers (export is
for single networks; their uncertainty is the spread of several networks or random passes;
distil them into a student); ONNX for networks with adaptive average pooling to more than
one bin (PSPNet's pyramid pooling: ONNX has no such operator for dynamic sizes; TorchScript
keeps the operator).

Both files carry a JSON description (name, kind, class count, names and colours,
uncertainty source, the OOD map's source, outputs, input normalisation): ONNX in its
`metadata_props` under "segdistill", TorchScript as the extra file "segdistill.json"
(`torch.jit.load(path, _extra_files={"segdistill.json": ""})`).
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from segdistill import __version__
from segdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segdistill.defaults import EXPORT_ATOL, EXPORT_FORMATS, EXPORT_OUTPUTS
from segdistill.errors import CheckpointError, ConfigError
from segdistill.models import Segmenter
from segdistill.models.teachers import Ensemble, MCDropout
from segdistill.predictor import (
    Predictor,
    input_multiple,
    padded_segmenter_prediction,
)

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
METADATA_KEY = "segdistill"
TORCHSCRIPT_METADATA = "segdistill.json"
# The suffix of the folder an export is written and checked in before it moves into place.
_STAGING = ".export"
# ONNX files are protobuf messages of at most 2 GiB; bigger weights go to a .data file.
ONNX_SIZE_LIMIT = 2**31 - 2**26


class ExportModule(nn.Module):
    """images [B, 3, H, W] -> (probs [B, C, H, W] or labels [B, H, W], uncertainty
    [B, 1, H, W], and with `ood_map` the OOD map [B, 1, H, W]) of one segmenter, for any
    B, H, W (see the module docstring); `output_names` names them in order."""

    def __init__(self, model: Segmenter, outputs: str = "probs", ood_map: bool = False) -> None:
        super().__init__()
        if outputs not in EXPORT_OUTPUTS:
            raise ConfigError(
                f"outputs must be one of {', '.join(EXPORT_OUTPUTS)}, not {outputs!r}"
            )
        self.model = model
        self.outputs = outputs
        self.ood_map = ood_map
        self.output_names = [outputs, "uncertainty", *(["ood_map"] if ood_map else [])]
        self.multiple = input_multiple([model])  # sizes of the sample and the check
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        prediction = padded_segmenter_prediction(self.model, images)
        probs = prediction.probs
        first = probs.argmax(dim=1) if self.outputs == "labels" else probs
        if self.ood_map:
            return first, prediction.uncertainty, prediction.ood_map
        return first, prediction.uncertainty


@dataclass(frozen=True)
class CheckResult:
    """An exported file compared with PyTorch on one random input.

    shape:       the input's shape [B, 3, H, W].
    max_diff:    {output: max |exported - PyTorch|} over the compared pixels (ood_map at
                 every pixel); for labels
                 the number of pixels whose exported class is not a near tie (PyTorch's
                 probability of it is below the top one minus atol).
    near_ties:   pixels whose exported class differs from PyTorch's argmax (near ties);
                 left out of the uncertainty comparison.
    atol:        the tolerance; ok: every float difference <= atol, no labels count.
    """

    shape: tuple[int, ...]
    max_diff: dict[str, float]
    near_ties: int
    atol: float
    ok: bool


@dataclass(frozen=True)
class ExportReport:
    """An export: where it is (or would be, when its check failed and nothing was
    written), which format (and ONNX opset), its outputs' names in order (e.g. ("probs",
    "uncertainty")) and its check."""

    path: Path
    format: str
    opset: int | None
    outputs: tuple[str, ...]
    sample_shape: tuple[int, ...]
    check: CheckResult

    @property
    def written(self) -> bool:
        """Whether the file is at `path`: only an export that passed its check is."""
        return self.check.ok


def exportable_network(predictor: Predictor) -> Segmenter:
    """The predictor's single network; CheckpointError for ensembles and MC dropout."""
    if isinstance(predictor.model, Ensemble):
        raise CheckpointError(
            f"{predictor.source} is an ensemble of {predictor.members} networks; export is for "
            "single networks (a student or a baseline). Distil the ensemble into a student, or "
            "export a member by its checkpoint listed in the manifest"
        )
    if isinstance(predictor.model, MCDropout):
        raise CheckpointError(
            f"{predictor.source} is an MC-dropout network: its uncertainty is the spread of "
            "random dropout passes, which an exported graph does not reproduce; export is for "
            "single deterministic networks (a student or a baseline)"
        )
    return predictor.model


def default_path(predictor: Predictor, fmt: str) -> Path:
    """Next to the weights: RUN/checkpoints/best.safetensors -> best.onnx / best.torchscript.pt."""
    return predictor.source.with_name(predictor.source.stem + SUFFIXES[fmt])


def description(predictor: Predictor, module: ExportModule) -> dict[str, object]:
    """The JSON stored in the exported file."""
    return {
        "name": predictor.name,
        "kind": predictor.kind,
        "weights": predictor.fingerprint(),  # as predict.json and ood_detector.json
        "segdistill": __version__,
        "num_classes": predictor.num_classes,
        # Class id -> name and display colour (None: weights written without them).
        "class_names": None if predictor.classes is None else list(predictor.classes.names),
        "class_colors": None
        if predictor.classes is None
        else predictor.classes.colors.astype(int).tolist(),
        "uncertainty_source": predictor.uncertainty_source,
        "uncertainty": "per pixel in [0, 1], higher = less certain (a map of the source above)",
        # The map whose image mean is an image's OOD score (ood_detector.json's ood_source):
        # the output "ood_map" where it is not the uncertainty.
        "ood_source": predictor.ood_source,
        "input": "images float32 [B, 3, H, W]: RGB / 255, minus mean, divided by std",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "outputs": module.output_names,
    }


def sample_shapes(multiple: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(export sample, check input) shapes [B, 3, H, W]: different batch sizes and sizes,
    the check's not a multiple of the padding multiple. The export sample's deepest
    feature map is 2x4, not 1x1, so no resize in the network is a no-op while tracing."""
    return (2, 3, 2 * multiple, 4 * multiple), (3, 3, 3 * multiple - 5, 5 * multiple + 3)


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence what the exporters say about torch itself, not about the model: deprecation
    notices (torch.jit is deprecated upstream), the ONNX registry's note that torchvision
    ops are skipped, tracer warnings about Python conditions on shapes (the check at
    another input size is what tells whether the graph generalises), and the opset
    converter's notes and traceback when it cannot reach the opset asked for
    (`export_onnx` reads the opset written and says so in one line)."""
    quiet = {
        "torch.onnx._internal.exporter._registration": logging.ERROR,
        "torch.onnx._internal.exporter._compat": logging.ERROR,
        "onnxscript.version_converter": logging.CRITICAL,
    }
    loggers = {logging.getLogger(name): level for name, level in quiet.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def _unsupported_onnx_pools(model: nn.Module) -> list[str]:
    """Names of adaptive average pools to more than one bin (no dynamic ONNX operator)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            bins = size if isinstance(size, tuple) else (size, size)
            if any(b is not None and b != 1 for b in bins):
                names.append(f"{name} ({size})")
    return names


def export_onnx(
    module: ExportModule, sample: Tensor, path: Path, opset: int | None, metadata: str
) -> int:
    """Write `module` as ONNX with dynamic batch, height and width (weights beyond
    protobuf's 2 GiB in a .data file beside `path`); returns the opset."""
    import onnx

    pools = _unsupported_onnx_pools(module.model)
    if pools:
        raise ConfigError(
            f"ONNX has no operator for adaptive average pooling to several bins at dynamic "
            f"sizes, which this network uses ({', '.join(pools)}: PSPNet's pyramid pooling); "
            "export it with --format torchscript"
        )
    parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = parameter_bytes > ONNX_SIZE_LIMIT
    with _quiet_exporters():
        torch.onnx.export(
            module,
            (sample,),
            str(path),
            input_names=["images"],
            output_names=module.output_names,
            # Named axes become Dim.DYNAMIC: torch.export may then refine their ranges with
            # the guards the network's shape arithmetic needs instead of failing on them.
            dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
            opset_version=opset,
            dynamo=True,
            external_data=external,
            verbose=False,
        )
    # Add the description; external weights (if any) stay where the exporter put them.
    model = onnx.load(str(path), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    written = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        # torch's exporter falls back to its own opset when it cannot convert the graph to
        # the one asked for, and says so only in a log; a file of another opset is no export.
        raise ConfigError(
            f"--opset {opset}: torch's ONNX exporter could not convert the network to opset "
            f"{opset} and wrote opset {written}; nothing was written (use --opset {written} "
            "or omit it)"
        )
    onnx.save(model, str(path))
    return written


def export_torchscript(module: ExportModule, sample: Tensor, path: Path, metadata: str) -> None:
    """Write `module` traced on `sample` as TorchScript, with the description, to `path`."""
    # Frozen weights: the file's outputs then need no gradient (`.numpy()` works on them).
    module.requires_grad_(False)
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        with open(path, "wb") as file:
            torch.jit.save(traced, file, _extra_files={TORCHSCRIPT_METADATA: metadata})


def run_exported(path: Path, fmt: str, images: Tensor) -> tuple[Tensor, ...]:
    """Run an exported file on CPU: images -> its outputs as tensors, in the order of its
    description's "outputs"."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return tuple(torch.from_numpy(o) for o in session.run(None, {"images": images.numpy()}))
    with _quiet_exporters(), torch.no_grad():
        return tuple(torch.jit.load(str(path), map_location="cpu")(images))


def compare(
    reference: tuple[Tensor, ...], exported: tuple[Tensor, ...], outputs: str, atol: float
) -> tuple[dict[str, float], int, bool]:
    """PyTorch's (probs [B, C, H, W], uncertainty [B, 1, H, W][, ood_map [B, 1, H, W]]) vs
    an exported file's outputs -> ({output: max difference}, near-tie pixels, ok); see the
    module docstring.

    A pixel may get another label than PyTorch's argmax only when PyTorch gives that class a
    probability within `atol` of the top one (a near tie); such pixels are counted and left
    out of the uncertainty comparison (a per-class head's value depends on the class)."""
    if len(exported) != len(reference):
        raise CheckpointError(
            f"the exported file has {len(exported)} outputs where the network has {len(reference)}"
        )
    probs, uncertainty = reference[:2]
    first, exported_uncertainty = exported[:2]
    diff: dict[str, float] = {}
    if outputs == "labels":
        labels = first
    else:
        diff["probs"] = float((first - probs).abs().max())
        labels = first.argmax(dim=1)
    top = probs.amax(dim=1)
    justified = probs.gather(1, labels[:, None])[:, 0] >= top - atol
    if outputs == "labels":
        diff["labels"] = float((~justified).sum())
    ties = labels != probs.argmax(dim=1)
    unc = (exported_uncertainty - uncertainty).abs()[:, 0][~ties]
    diff["uncertainty"] = float(unc.max()) if unc.numel() else 0.0
    if len(reference) == 3:
        diff["ood_map"] = float((exported[2] - reference[2]).abs().max())
    ok = all(value == 0 if name == "labels" else value <= atol for name, value in diff.items())
    return diff, int(ties.sum()), ok


def check_export(
    path: Path, fmt: str, module: ExportModule, shape: tuple[int, ...], atol: float = EXPORT_ATOL
) -> CheckResult:
    """Compare the exported file with PyTorch on a random normal input of `shape`."""
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference = ExportModule(module.model, "probs", module.ood_map)
    with torch.no_grad():
        expected = reference(images)
    exported = run_exported(path, fmt, images)
    diff, ties, ok = compare(expected, exported, module.outputs, atol)
    return CheckResult(tuple(shape), diff, ties, atol, ok)


def export_predictor(
    predictor: Predictor,
    fmt: str,
    out: Path | None = None,
    *,
    opset: int | None = None,
    outputs: str = "probs",
    atol: float = EXPORT_ATOL,
) -> ExportReport:
    """Export the predictor's network to `out` (default `default_path`) and check it."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if opset is not None and fmt != "onnx":
        raise ConfigError("--opset applies to ONNX only")
    # A copy: exporting must not move, freeze or switch the mode of the caller's network.
    model = copy.deepcopy(exportable_network(predictor)).to("cpu")
    # Holder's per-class head scores OOD images on its own map (eq. 8): export that too.
    module = ExportModule(
        model, outputs, ood_map=predictor.ood_source != predictor.uncertainty_source
    )
    path = Path(out) if out is not None else default_path(predictor, fmt)
    predictor.check_not_an_input(path, "--out")
    path.parent.mkdir(parents=True, exist_ok=True)
    sample_shape, check_shape = sample_shapes(module.multiple)
    sample = torch.randn(sample_shape, generator=torch.Generator().manual_seed(1))
    metadata = json.dumps(description(predictor, module))
    used_opset = None
    with _staging_folder(path) as staging:
        staged = staging / path.name
        if fmt == "onnx":
            used_opset = export_onnx(module, sample, staged, opset, metadata)
        else:
            export_torchscript(module, sample, staged, metadata)
        check = check_export(staged, fmt, module, check_shape, atol)
        if check.ok:
            _install(staging, path)
    return ExportReport(path, fmt, used_opset, tuple(module.output_names), sample_shape, check)


@contextmanager
def _staging_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` to write and check an export in, removed afterwards; a
    killed export's folder is removed by the next export of the same file."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{_STAGING}"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_STAGING, dir=path.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(staging: Path, path: Path) -> None:
    """Move the files of `staging` beside `path` (ONNX's external weights first, the model
    last), each on disk before its rename makes it current."""
    for file in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(file, path.parent / file.name)


def read_description(path: Path, fmt: str) -> dict[str, object]:
    """The JSON description stored in an exported file."""
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {entry.key: entry.value for entry in model.metadata_props}
        return json.loads(props[METADATA_KEY])
    files = {TORCHSCRIPT_METADATA: ""}
    with _quiet_exporters():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[TORCHSCRIPT_METADATA])
