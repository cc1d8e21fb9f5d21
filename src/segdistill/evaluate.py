"""Evaluation runs: models over the clean splits and every shifted copy -> metrics.json.

`evaluate(sources, data_root)` loads each source with `load_predictor`, streams every
split once, runs all models on each batch (the teacher first, so the students' maps are
paired with the teacher's of the same pixels), and writes, per model,

- `splits`: `SegmentationEvaluator.compute()` per split (mIoU per set = Holder Table 2;
  the uncertainty is the predictor's, see `segdistill.predictor`); a split without
  labelled pixels (Cityscapes' test) has None for the pixel metrics, with a printed notice;
- `ood`: image-level OOD detection of every shifted set (not `anomaly`) against its own
  in-distribution clean split (`ood_references`: the split it is read on when evaluated,
  else "test"), for each aggregator of `image_scores` (Holder & Shafique 5.3, Fig. 6),
  and the image scores themselves (Fig. 7). The scores
  aggregate every pixel of an image's `Prediction.ood_map` (the uncertainty, or for a
  per-class head Holder's eq. 8 mean over the classes; `ood_source` names it), void pixels
  included, since an OOD detector sees no labels;
- `anomaly`: pixel-level anomaly detection on the split with `_gtFine_anomaly.png` masks
  (SynthStreets' `anomaly`), the uncertainty as score, pixels pooled inside the mask's
  region of interest (`AnomalyEvaluator`);
- `vs_teacher`: when an ensemble / MC-dropout teacher is among the sources, for every other
  model and split: `PairedUncertaintyStats` of its map against the teacher's (Holder Fig.
  3) and the per-class mean uncertainty differences student - teacher (DUDES Table 2).

Splits are looked up under `data_root`: `leftImg8bit/<split>/` of the tree itself,
`shifts/<name>/leftImg8bit/<split>/` of each shifted copy (the SynthStreets layout, see
`segdistill.data.synthstreets`) and the official Foggy / Rain Cityscapes folders
`leftImg8bit_foggy/` (one shifted set per fog beta) and `leftImg8bit_rain/` (every rain
pattern). A split is named by its folder ("test", "val") or by its shift ("fog_0.02",
"rain", "night", ...: Foggy Cityscapes' betas take the names of SynthStreets' fog copies).
A shifted set is read on the reference split when its masks have labelled pixels, else on
val (Cityscapes' test masks are all void). By default (`select_splits`) the clean splits
the shifted sets are scored against are evaluated, then the sets; without shifted sets
"test", or "val" where test's masks are void (Cityscapes) or there is no test. A folder
data set (`DATA/classes.yaml`, `segdistill.data.folder`) has its sub-folders as splits and
no shifted copies.

Where results go: each model's own directory (`Predictor.home`, a run or ensemble
directory) gets `metrics.json` and `figures/`; `out_dir` gets `results.json` with every
model, comparison figures in `figures/` and each model's figures in `figures/<name>/`.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from segdistill import figures
from segdistill.data.base import (
    SegmentationDataset,
    group_consecutive,
    image_size,
)
from segdistill.data.cityscapes import (
    CityscapesDataset,
    GtFineMap,
    foggy_betas,
    has_labelled_pixels,
    image_location,
    split_folders,
    variant_splits,
)
from segdistill.data.folder import (
    CLASSES_FILE,
    IMAGES_DIR,
    MASKS_DIR,
    FolderDataset,
    folder_splits,
    is_folder_data_set,
)
from segdistill.data.shifts import SHIFT_KINDS, expand_shifts, fog_name
from segdistill.data.synthstreets import SHIFTS_DIR
from segdistill.data.transforms import unnormalize
from segdistill.defaults import (
    AGGREGATORS,
    DEFAULT_MC_SAMPLES,
    RESULTS_FILE,
    uncertainty_scale,
)
from segdistill.errors import CheckpointError, ConfigError, DataError
from segdistill.interrupts import ignore_ctrl_c, stop_on_ctrl_c
from segdistill.jsonfiles import write_json
from segdistill.metric_fields import SPLIT_METRICS, split_value
from segdistill.metrics import (
    AnomalyEvaluator,
    PairedUncertaintyStats,
    SegmentationEvaluator,
    image_scores,
    ood_metrics,
)
from segdistill.output_paths import folder_user
from segdistill.predictor import (
    TEACHER_KINDS,
    Prediction,
    Predictor,
    default_device,
    load_predictor,
    unique_names,
)
from segdistill.tables import text_table

SCHEMA_MODEL = "segdistill.metrics/1"
SCHEMA_RESULTS = "segdistill.results/1"
SCHEMA_EXPERIMENT = "segdistill.experiment/1"  # an experiment's results.json (pipeline/results.py)
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"
REFERENCE_SPLIT = "test"
ANOMALY_SUFFIX = "_gtFine_anomaly.png"
# Uncertainty histograms over [0, 1]: 1000 fine bins for the metrics, 200 kept in the JSON
# so that the figures can zoom into the narrow range a std occupies (pred_std <= 0.5).
UNCERTAINTY_BINS = 1000
PLOT_BINS = 200
PAIRED_BINS = 50
# Sample images in figures are subsampled to at most this width (figures are small).
SAMPLE_MAX_WIDTH = 512
# Shift folders in the order the data generator writes them, unknown names after.
_SHIFT_ORDER = [spec.name for spec in expand_shifts(SHIFT_KINDS)]


@dataclass(frozen=True)
class EvalSplit:
    """One evaluated set: `root`/leftImg8bit/`folder`/... with its name; `anomaly` when it
    has pixel anomaly masks; `shifted` when it is a copy under `shifts/` or a Foggy / Rain
    Cityscapes set (`variant` "foggy" with its `beta`, or "rain": `CityscapesDataset`).
    With `layout` "folder", the split `folder` of a folder data set
    (`segdistill.data.folder`)."""

    name: str
    root: Path
    folder: str
    anomaly: bool
    shifted: bool
    layout: str = "cityscapes"
    variant: str = "clean"
    beta: float = 0.02

    def dataset(self) -> SegmentationDataset:
        if self.layout == "folder":
            return FolderDataset.split(self.root, self.folder)
        maps = {"anomaly": GtFineMap(ANOMALY_SUFFIX)} if self.anomaly else None
        return CityscapesDataset(
            self.root, self.folder, maps=maps, variant=self.variant, beta=self.beta
        )

    @property
    def masks(self) -> Path:
        """The folder of the split's masks."""
        if self.layout == "folder":
            return self.root / self.folder / MASKS_DIR
        return self.root / "gtFine" / self.folder

    @property
    def images(self) -> Path:
        """The folder of the split's images."""
        if self.layout == "folder":
            return self.root / self.folder / IMAGES_DIR
        return self.root / image_location(self.variant)[0] / self.folder


def find_splits(data_root: str | Path) -> dict[str, EvalSplit]:
    """Every evaluable split under `data_root` (module doc), in-distribution folders first,
    then the shifted copies in the generator's order. DataError when there is none."""
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    if is_folder_data_set(root):
        splits = folder_splits(root)
        if not splits:
            raise DataError(
                f"{root} has {CLASSES_FILE} but no split: expected {root}/<split>/{IMAGES_DIR}/"
            )
        return {name: EvalSplit(name, root, name, False, False, "folder") for name in splits}
    found: dict[str, EvalSplit] = {}
    for folder in split_folders(root):
        found[folder] = EvalSplit(folder, root, folder, _has_anomaly(root, folder), False)
    shifted: dict[str, EvalSplit] = {}
    for spec in [*_shift_copies(root), *_weather_sets(root)]:
        if spec.name in shifted:
            raise DataError(
                f"two shifted sets are named {spec.name!r}: {shifted[spec.name].images} and "
                f"{spec.images}; keep one of them under {root}"
            )
        shifted[spec.name] = spec
    for name in sorted(
        shifted,
        key=lambda n: (_SHIFT_ORDER.index(n) if n in _SHIFT_ORDER else len(_SHIFT_ORDER), n),
    ):
        found[name] = shifted[name]
    if not found:
        raise DataError(
            f"no images under {root}: expected {root}/leftImg8bit/<split>/<city>/"
            f"*_leftImg8bit.png or {root}/{SHIFTS_DIR}/<shift>/leftImg8bit/<split>/... "
            f"(Cityscapes layout), or {root}/{CLASSES_FILE} with {root}/<split>/{IMAGES_DIR}/ "
            "and masks/ (a folder data set)"
        )
    return found


def _shift_copies(root: Path) -> list[EvalSplit]:
    """The shifted copies `root`/shifts/<name>/ (SynthStreets), each on its
    `_labelled_folder`."""
    copies = []
    for images in sorted((root / SHIFTS_DIR).glob("*/leftImg8bit")):
        tree = images.parent
        folders = split_folders(tree)
        if folders:
            folder = _labelled_folder(tree, folders)
            copies.append(EvalSplit(tree.name, tree, folder, _has_anomaly(tree, folder), True))
    return copies


def _weather_sets(root: Path) -> list[EvalSplit]:
    """Foggy Cityscapes (one set per beta) and Rain Cityscapes (every rain pattern) under
    `root`, each on its `_labelled_folder`. They are named as SynthStreets' copies of the
    same shifts ("fog_0.02", "rain"), so that an experiment's checks (`ood_auroc@fog_0.02`)
    read either data set."""
    sets = []
    for variant in ("foggy", "rain"):
        folders = variant_splits(root, variant)
        if not folders:
            continue
        folder = _labelled_folder(root, folders)
        anomaly = _has_anomaly(root, folder)
        if variant == "foggy":
            sets += [
                EvalSplit(fog_name(beta), root, folder, anomaly, True, variant=variant, beta=beta)
                for beta in foggy_betas(root, folder)
            ]
        else:
            sets.append(EvalSplit("rain", root, folder, anomaly, True, variant=variant))
    return sets


def _labelled_folder(tree: Path, folders: Sequence[str]) -> str:
    """The split folder a shifted set is evaluated on: the reference split when its masks
    have labelled pixels, else val, else the first labelled one (Cityscapes' test masks are
    all void); with none labelled, the reference split (or the first), whose OOD scores
    need no labels."""
    preferred = sorted(folders, key=lambda f: (f != REFERENCE_SPLIT, f != "val"))
    return next((f for f in preferred if has_labelled_pixels(tree, f)), preferred[0])


def _clean_split(spec: EvalSplit, clean: Sequence[str]) -> str:
    """The clean split a shifted set is scored against as OOD: the split its images are
    read on when that one is among `clean` (Foggy / Rain Cityscapes: val, the same scenes
    without the weather), else REFERENCE_SPLIT ("test"; SynthStreets' copies are of its
    test images)."""
    return spec.folder if spec.folder in clean else REFERENCE_SPLIT


def ood_references(selected: Sequence[EvalSplit]) -> dict[str, str]:
    """{shifted set: the clean split it is scored against as OOD (`_clean_split`)} for each
    selected shifted set but the pixel-anomaly one whose clean split is selected too. Each
    set has its own: with a labelled Cityscapes test, Foggy Cityscapes is read on test but
    Rain Cityscapes (which has no test) on val, and rain against test would compare other
    cities, not the weather."""
    clean = [s.name for s in selected if not s.shifted]
    references = {s.name: _clean_split(s, clean) for s in selected if s.shifted and not s.anomaly}
    return {name: split for name, split in references.items() if split in clean}


def main_reference(references: dict[str, str]) -> str | None:
    """The clean split most shifted sets are scored against (the first of a tie), for the
    captions that name one (`ood.reference`); None without a set."""
    splits = list(references.values())
    return max(dict.fromkeys(splits), key=splits.count) if splits else None


def _has_anomaly(tree: Path, folder: str) -> bool:
    return next((tree / "gtFine" / folder).glob(f"*/*{ANOMALY_SUFFIX}"), None) is not None


def select_splits(
    available: dict[str, EvalSplit], requested: Sequence[str] | None
) -> list[EvalSplit]:
    """The requested splits; DataError naming the unknown ones and listing what is
    available. The default: with shifted sets, the clean splits they are scored against
    (`_clean_split`: SynthStreets' test, Foggy / Rain Cityscapes' val) and then every
    shifted set; without, `_labelled_clean_split` (test, or val for Cityscapes)."""
    if requested is None:
        shifted = [s for s in available.values() if s.shifted]
        clean = [name for name, s in available.items() if not s.shifted]
        # Only the clean splits that serve as a reference: Cityscapes' test, when the
        # weather sets are read on val, is ~1500 images of void masks that neither a pixel
        # metric nor an OOD score would use, and a tree may have no test at all.
        references = {_clean_split(s, clean) for s in shifted}
        sources = [name for name in clean if name in references]
        default = [*sources, *(s.name for s in shifted)]
        requested = default if shifted else [_labelled_clean_split(available)]
    if not requested:
        raise DataError(f"no split asked for; available: {', '.join(available)}")
    unknown = [name for name in requested if name not in available]
    if unknown:
        root = next(iter(available.values())).root
        raise DataError(
            f"split {', '.join(map(repr, unknown))} not found under {root}; available: "
            f"{', '.join(available)}; choose with --splits (e.g. --splits "
            f"{next(iter(available))})"
        )
    return [available[name] for name in dict.fromkeys(requested)]


def _labelled_clean_split(available: dict[str, EvalSplit]) -> str:
    """Of test and val, as `_labelled_folder` chooses (val where test's masks are void, as
    Cityscapes' official test, or test is absent; a folder data set's test when it has
    one); REFERENCE_SPLIT when neither is there (the error then lists what is)."""
    candidates = [name for name in (REFERENCE_SPLIT, "val") if name in available]
    if not candidates:
        return REFERENCE_SPLIT
    return _labelled_folder(available[candidates[0]].root, candidates)


@dataclass
class SampleSet:
    """The first images of one split with every model's prediction, for figures.

    images: K arrays [h, w, 3] uint8; labels: K arrays [h, w] class ids; predictions /
    uncertainty: {model: K arrays [h, w]} (uint8 classes / float32); all subsampled to
    SAMPLE_MAX_WIDTH. Images of different batches may differ in size.
    palette [C, 3] and ignore_index: the data set's, to draw its classes.
    """

    split: str
    palette: np.ndarray
    ignore_index: int
    names: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    predictions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    uncertainty: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, batch: dict[str, Any], count: int) -> None:
        step = max(1, math.ceil(batch["image"].shape[-1] / SAMPLE_MAX_WIDTH))
        self.names += list(batch["name"][:count])
        self.images += list(unnormalize(batch["image"][:count, :, ::step, ::step]))
        self.labels += list(batch["label"][:count, ::step, ::step].numpy())

    def add_model(self, name: str, prediction: Prediction, count: int, width: int) -> None:
        step = max(1, math.ceil(width / SAMPLE_MAX_WIDTH))
        probs = prediction.probs[:count, :, ::step, ::step]
        unc = prediction.uncertainty[:count, 0, ::step, ::step]
        self.predictions.setdefault(name, []).extend(probs.argmax(1).to(torch.uint8).cpu().numpy())
        self.uncertainty.setdefault(name, []).extend(unc.float().cpu().numpy())


class ModelAccumulators:
    """Everything one model accumulates over one split."""

    def __init__(self, num_classes: int, ignore_index: int, anomaly: bool, paired: bool) -> None:
        self.segmentation = SegmentationEvaluator(
            num_classes,
            inputs="probs",
            ignore_index=ignore_index,
            num_bins=UNCERTAINTY_BINS,
            plot_bins=PLOT_BINS,
        )
        self.scores: dict[str, list[float]] = {name: [] for name in AGGREGATORS}
        self.anomaly = AnomalyEvaluator(ignore_index=ignore_index) if anomaly else None
        self.paired = (
            PairedUncertaintyStats(num_bins=PAIRED_BINS, ignore_index=ignore_index)
            if paired
            else None
        )

    def update(
        self,
        prediction: Prediction,
        target: Tensor,
        anomaly_mask: Tensor | None,
        teacher_uncertainty: Tensor | None,
    ) -> None:
        """prediction of a batch; target [B, H, W]; anomaly_mask [B, H, W] or None;
        teacher_uncertainty [B, 1, H, W] of the same batch (students only)."""
        unc = prediction.uncertainty
        self.segmentation.update(prediction.probs, unc, target)
        for name, values in image_scores(prediction.ood_map).items():
            self.scores[name] += values.tolist()
        if self.anomaly is not None and anomaly_mask is not None:
            self.anomaly.update(unc, anomaly_mask)
        if self.paired is not None and teacher_uncertainty is not None:
            self.paired.update(unc, teacher_uncertainty, prediction.probs.argmax(1), target)

    def paired_metrics(self) -> dict[str, Any]:
        """The student-vs-teacher statistics; ValueError for a model without a teacher."""
        if self.paired is None:
            raise ValueError("this model was evaluated without a teacher to pair it with")
        return self.paired.compute()


def evaluate(
    sources: Sequence[str | Path | Predictor],
    data_root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    batch_size: int = 4,
    out_dir: str | Path | None = None,
    write_homes: bool = True,
    max_images: int | None = None,
    num_samples: int = 3,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    make_figures: bool = True,
) -> dict[str, Any]:
    """Evaluate every source on every split; returns the combined results (module doc).

    sources: run directories, weights files, ensemble directories / manifests, or loaded
    predictors. splits: names from `find_splits` (default, `select_splits`: the clean
    splits the shifted sets are scored against, then every shifted set; "test" without).
    out_dir: where results.json and comparison figures go (needed when a source has no
    directory of its own). write_homes: write metrics.json / figures into each model's
    directory. max_images: evaluate only the first N images of each split. num_samples:
    images per split in the sample figures. mc_samples: passes of an MC-dropout model.
    device: default CUDA when available. channels_last: the models and images in the
    channels-last memory format (`Predictor.to`).

    Returns the content of results.json plus "files": the JSON files written.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images}")
    given = [Path(s).resolve() for s in sources if not isinstance(s, Predictor)]
    twice = sorted({str(path) for path in given if given.count(path) > 1})
    if twice:
        # It would be evaluated twice and write its metrics.json twice, under two names.
        raise ConfigError(f"models given more than once: {', '.join(twice)}; give each once")
    device = default_device(device)
    selected = select_splits(find_splits(data_root), splits)
    datasets = {s.name: s.dataset() for s in selected}
    predictors = unique_names(
        [s if isinstance(s, Predictor) else load_predictor(s, mc_samples) for s in sources]
    )
    first = next(iter(datasets.values()))
    for predictor in predictors:
        _check_classes(predictor, first, data_root)
        user = folder_user(predictor.home) if predictor.home is not None else None
        if user is not None:
            tqdm.write(
                f"notice: {predictor.home} is still being written by a run ({user}): its "
                "metrics are of the weights it holds now; evaluate it again when the run "
                "has ended",
                file=sys.stderr,
            )
    if out_dir is None and any(p.home is None or not write_homes for p in predictors):
        loose = [str(p.source) for p in predictors if p.home is None or not write_homes]
        raise ConfigError(
            f"no directory to write the results of {', '.join(loose)}: pass an output folder "
            "(--out DIR)"
        )
    if out_dir is not None and make_figures and write_homes:
        for predictor in predictors:
            home = predictor.home
            if home is not None and Path(out_dir).resolve() == home.resolve():
                # Its own figures/ would be overwritten by the comparison figures of the
                # same names, and its metrics.json would point at them.
                raise ConfigError(
                    f"--out {out_dir} is the directory of {predictor.name}, whose "
                    f"{FIGURES_DIR}/ the comparison figures would overwrite: give another "
                    "folder (or --no-figures)"
                )
    # The teacher runs first in every batch so its map is there to pair the students with.
    teacher = next((p for p in predictors if p.kind in TEACHER_KINDS), None)
    order = sorted(predictors, key=lambda p: p is not teacher)
    for predictor in order:
        predictor.to(device, channels_last)

    per_split: dict[str, dict[str, ModelAccumulators]] = {}
    samples: list[SampleSet] = []
    for spec in selected:
        dataset: SegmentationDataset | Subset[Any] = datasets[spec.name]
        if max_images is not None:
            dataset = Subset(dataset, range(min(max_images, len(dataset))))
        per_split[spec.name], sample_set = _run_split(
            order,
            teacher,
            spec,
            dataset,
            first,
            batch_size,
            num_samples,
            device,
            num_workers,
            progress,
        )
        samples.append(sample_set)

    class_names = list(first.classes)
    mine = {p.name: {split: acc[p.name] for split, acc in per_split.items()} for p in predictors}
    computed = {
        name: {split: acc.segmentation.compute() for split, acc in accs.items()}
        for name, accs in mine.items()
    }
    # Every model sees the same labels: any model's counts tell the unlabelled splits.
    counts = next(iter(computed.values()), {})
    for spec in selected:
        if spec.name in counts and not counts[spec.name]["num_pixels"]:
            tqdm.write(
                f"notice: no labelled pixels in split {spec.name!r} (masks in {spec.masks}, "
                f"images evaluated: {counts[spec.name]['num_images']}): its pixel metrics are "
                "undefined ('-'); its image-level OOD scores need no labels and are still "
                "computed",
                file=sys.stderr,
            )
    # Clean splits (e.g. test beside Cityscapes' val) are no OOD set; each shifted set is
    # scored against its own clean split.
    references = ood_references(selected)
    models = [
        model_result(
            p,
            mine[p.name],
            computed[p.name],
            class_names,
            references,
            None if teacher is None or p is teacher else (teacher, computed[teacher.name]),
        )
        for p in predictors
    ]
    results = {
        "schema": SCHEMA_RESULTS,
        "data": {
            "root": str(Path(data_root)),
            "num_classes": first.num_classes,
            "class_names": class_names,
            "ignore_index": first.ignore_index,
            "splits": [s.name for s in selected],
            "reference": main_reference(references),
            "references": references,
        },
        # A GPU's TF32 convolutions move the last digits (docs/evaluation.md): say where.
        "settings": {
            "device": str(device),
            "channels_last": channels_last,
            "batch_size": batch_size,
            "max_images": max_images,
            "torch": torch.__version__,
        },
        "models": models,
    }
    files = _write(results, predictors, samples, out_dir, write_homes, make_figures)
    return {**results, "files": [str(f) for f in files]}


def _check_classes(
    predictor: Predictor, dataset: SegmentationDataset, data_root: str | Path
) -> None:
    if predictor.num_classes != dataset.num_classes:
        raise CheckpointError(
            f"{predictor.source} predicts {predictor.num_classes} classes but the data set "
            f"{data_root} has {dataset.num_classes}; evaluate it on data with "
            f"{predictor.num_classes} classes"
        )
    trained_on = predictor.classes.names if predictor.classes is not None else None
    if trained_on is not None and tuple(trained_on) != tuple(dataset.classes):
        differ = [
            f"{index} ({ours} in the weights, {theirs} in the data)"
            for index, (ours, theirs) in enumerate(zip(trained_on, dataset.classes))
            if ours != theirs
        ]
        # Renamed classes are harmless, reordered ones are scored under the wrong names:
        # only the user can tell, so this is a notice, not an error.
        tqdm.write(
            f"notice: {predictor.name} was trained on other class names than {data_root} "
            f"gives in ids {', '.join(differ)}; its scores are shown under the data set's "
            "names: check that the ids mean the same classes",
            file=sys.stderr,
        )


def _run_split(
    predictors: list[Predictor],
    teacher: Predictor | None,
    spec: EvalSplit,
    dataset: SegmentationDataset | Subset[Any],
    reference: SegmentationDataset,
    batch_size: int,
    num_samples: int,
    device: torch.device,
    num_workers: int,
    progress: bool,
) -> tuple[dict[str, ModelAccumulators], SampleSet]:
    """Stream one split through every predictor (each image once per model)."""
    accumulators = {
        p.name: ModelAccumulators(
            reference.num_classes,
            reference.ignore_index,
            spec.anomaly,
            paired=teacher is not None and p is not teacher,
        )
        for p in predictors
    }
    samples = SampleSet(spec.name, reference.colors, reference.ignore_index)
    loader = DataLoader(
        dataset,
        batch_sampler=size_batches(dataset, batch_size),
        num_workers=num_workers,
        worker_init_fn=ignore_ctrl_c,
    )
    bar = tqdm(
        loader, desc=f"{spec.name} ({len(dataset)} images)", unit="batch", disable=not progress
    )
    for batch in stop_on_ctrl_c(bar):
        images = batch["image"].to(device)
        target = batch["label"].to(device)
        mask = batch["maps"]["anomaly"][:, 0].to(device).long() if spec.anomaly else None
        take = min(num_samples - len(samples.names), images.shape[0])
        if take > 0:
            samples.add(batch, take)
        teacher_unc = None
        for predictor in predictors:
            prediction = predictor.predict_padded(images)
            accumulators[predictor.name].update(prediction, target, mask, teacher_unc)
            if predictor is teacher:
                teacher_unc = prediction.uncertainty
            if take > 0:
                samples.add_model(predictor.name, prediction, take, images.shape[-1])
            del prediction
    return accumulators, samples


def size_batches(dataset: SegmentationDataset | Subset[Any], batch_size: int) -> list[list[int]]:
    """The data set's indices in order, in batches of at most `batch_size` consecutive images
    of one size (from the files' headers): a batch stacks its images, so a data set of
    mixed sizes (your own photos) is evaluated without resizing, each batch padded as
    `segdistill predict` pads its images (`Predictor.predict_padded`)."""
    if isinstance(dataset, Subset):
        base, indices = cast(SegmentationDataset, dataset.dataset), list(dataset.indices)
    else:
        base, indices = dataset, list(range(len(dataset)))
    return list(
        group_consecutive(
            range(len(indices)),
            lambda position: image_size(base.samples[indices[position]].image),
            batch_size,
        )
    )


def ood_results(
    scores: dict[str, dict[str, list[float]]], references: dict[str, str]
) -> dict[str, Any] | None:
    """Image-level OOD detection of each shifted set against its clean split.

    scores: {split: {aggregator: [image scores]}}; references: {shifted set: its clean
    split} (`ood_references`). Returns {"reference" (`main_reference`), "aggregators",
    "image_scores": scores, "sets": {set: {"reference", "best_aggregator", "by_aggregator":
    {aggregator: ood_metrics(...)}}}}; the best aggregator has the highest AUROC. A set
    without the scores of both its images and its clean split's is left out; None
    without a set.
    """
    scored = {n: r for n, r in references.items() if n in scores and r in scores}
    if not scored:
        return None
    sets = {}
    for name, reference in scored.items():
        by_aggregator = {
            agg: ood_metrics(scores[reference][agg], scores[name][agg]) for agg in AGGREGATORS
        }
        aurocs = {agg: m["auroc"] for agg, m in by_aggregator.items() if m["auroc"] is not None}
        best = max(aurocs, key=aurocs.__getitem__) if aurocs else None
        sets[name] = {
            "reference": reference,
            "best_aggregator": best,
            "by_aggregator": by_aggregator,
        }
    return {
        "reference": main_reference(scored),
        "aggregators": list(AGGREGATORS),
        "image_scores": scores,
        "sets": sets,
    }


def class_differences(
    student: dict[str, Any], teacher: dict[str, Any], same_scale: bool = True
) -> dict[str, Any]:
    """Student - teacher differences of two `SegmentationEvaluator.compute()` results:
    per_class_mean_uncertainty [C] (DUDES Table 2), class_mean_uncertainty, pixel_mean
    uncertainty and iou [C] (DUDES Table 1); None where either side is None, and for the
    uncertainties unless `same_scale` (the two measures' `uncertainty_scale`: 1 - max
    softmax minus pred_std is no difference)."""

    def diff(a: Any, b: Any) -> Any:
        if isinstance(a, list):
            return [diff(x, y) for x, y in zip(a, b)]
        return None if a is None or b is None else a - b

    su, tu = student["uncertainty"], teacher["uncertainty"]
    if not same_scale:
        unknown = [None] * len(su["per_class_mean"])
        su = {**su, "per_class_mean": unknown, "class_mean": None, "pixel_mean": None}
    return {
        "per_class_mean_uncertainty": diff(su["per_class_mean"], tu["per_class_mean"]),
        "class_mean_uncertainty": diff(su["class_mean"], tu["class_mean"]),
        "pixel_mean_uncertainty": diff(su["pixel_mean"], tu["pixel_mean"]),
        "iou": diff(student["segmentation"]["iou"], teacher["segmentation"]["iou"]),
        "miou": diff(student["segmentation"]["miou"], teacher["segmentation"]["miou"]),
    }


def model_result(
    predictor: Predictor,
    accumulators: dict[str, ModelAccumulators],
    splits: dict[str, dict[str, Any]],
    class_names: list[str],
    references: dict[str, str],
    teacher: tuple[Predictor, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The metrics.json content of one model (docs/evaluation.md has the schema).

    accumulators: {split: what the model accumulated}; splits: {split: its segmentation
    results}; references: {evaluated shifted set scored as OOD: the clean split it is
    scored against} (`ood_references`); teacher: (teacher, its segmentation results per
    split) for a student.
    """
    anomaly = next(((s, a.anomaly) for s, a in accumulators.items() if a.anomaly is not None), None)
    vs_teacher = None
    if teacher is not None:
        scales = {uncertainty_scale(p.uncertainty_source) for p in (predictor, teacher[0])}
        same_scale = len(scales) == 1
        vs_teacher = {
            "teacher": teacher[0].name,
            "teacher_uncertainty_source": teacher[0].uncertainty_source,
            "splits": {
                split: {
                    "paired": acc.paired_metrics(),
                    **class_differences(splits[split], teacher[1][split], same_scale),
                }
                for split, acc in accumulators.items()
            },
        }
    return {
        "schema": SCHEMA_MODEL,
        "name": predictor.name,
        "kind": predictor.kind,
        "members": predictor.members,
        "uncertainty_source": predictor.uncertainty_source,
        "ood_source": predictor.ood_source,
        "parameters": predictor.parameters,
        "source": str(predictor.source),
        "weights": predictor.fingerprint(),
        "class_names": class_names,
        "splits": splits,
        "ood": ood_results({split: acc.scores for split, acc in accumulators.items()}, references),
        "anomaly": None if anomaly is None else {"split": anomaly[0], **anomaly[1].compute()},
        "vs_teacher": vs_teacher,
        "figures": {},
    }


def _write(
    results: dict[str, Any],
    predictors: list[Predictor],
    samples: list[SampleSet],
    out_dir: str | Path | None,
    write_homes: bool,
    make_figures: bool,
) -> list[Path]:
    """metrics.json + figures into each model's home, results.json + figures into out_dir.
    Returns the JSON files written.

    Each model dict gets "figures": {figure name: path relative to the JSON file's folder}.
    A model's figures are drawn once; out_dir gets copies of those drawn in its home.
    """
    models = results["models"]
    teacher = next((m for m in models if m["kind"] in TEACHER_KINDS), None)
    out = None if out_dir is None else Path(out_dir)
    files = []
    for predictor, model in zip(predictors, models):
        shown = [teacher, model] if teacher is not None and model is not teacher else [model]
        # Each model in the colour of its place among all: as in the comparison figures.
        slots = [next(i for i, m in enumerate(models) if m is one) for one in shown]
        drawn: dict[str, Path] = {}
        if make_figures:
            home = predictor.home if write_homes else None
            if home is not None:
                folder = home / FIGURES_DIR
            else:
                assert out is not None  # evaluate() refuses such a model without an out_dir
                folder = out / FIGURES_DIR / model["name"]
            drawn = _model_figures(shown, slots, samples, folder)
        if write_homes and predictor.home is not None:
            relative = {k: str(p.relative_to(predictor.home)) for k, p in drawn.items()}
            write_json(predictor.home / METRICS_FILE, {**model, "figures": relative})
            files.append(predictor.home / METRICS_FILE)
        if out is not None:
            folder = out / FIGURES_DIR / model["name"]
            for path in drawn.values():
                if path.parent != folder:
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, folder / path.name)
            model["figures"] = {
                k: f"{FIGURES_DIR}/{model['name']}/{p.name}" for k, p in drawn.items()
            }
    if out is None:
        return files
    if make_figures:
        comparison = _save_all(figures.comparison_figures(models), out / FIGURES_DIR)
        results["figures"] = {k: str(p.relative_to(out)) for k, p in comparison.items()}
    write_json(out / RESULTS_FILE, results)
    return [*files, out / RESULTS_FILE]


def _sample_rows(sample_sets: Sequence[SampleSet], name: str, first_only: bool) -> dict[str, Any]:
    """Arguments of `figures.sample_predictions` for model `name`: every collected image of
    each set, or only the first of each (labelled with the set's name). The rows stay
    lists: their sizes differ in a data set of mixed sizes."""
    count = 1 if first_only else None
    rows: dict[str, list[Any]] = {k: [] for k in ("names", "images", "labels", "pred", "unc")}
    for s in sample_sets:
        rows["names"] += [s.split] if first_only else s.names
        rows["images"] += s.images[:count]
        rows["labels"] += s.labels[:count]
        rows["pred"] += s.predictions[name][:count]
        rows["unc"] += s.uncertainty[name][:count]
    return {
        "names": rows["names"],
        "images": rows["images"],
        "labels": rows["labels"],
        "predictions": rows["pred"],
        "uncertainty": rows["unc"],
        "palette": sample_sets[0].palette,
        "ignore_index": sample_sets[0].ignore_index,
    }


def _model_figures(
    shown: list[dict[str, Any]], slots: list[int], samples: list[SampleSet], folder: Path
) -> dict[str, Path]:
    """One model's figures (the teacher's curves beside its own, when given, in the
    colours of their `slots` among all the models), the sample
    predictions of its `summary_split` ("samples_<split>", e.g. "samples_test"; on
    Cityscapes "samples_val", as its test masks are all void) and the first image of every
    set ("samples_sets": the same scene under each shift), saved in `folder`. The sample
    maps are drawn on the fixed scale of `figures.sample_predictions`, the same for
    every model, and named by the model's uncertainty measure."""
    model = shown[-1]
    name = model["name"]
    written = _save_all(figures.model_figures(shown, slots), folder)
    sets = [s for s in samples if s.names]
    if not sets:
        return written
    # What the maps measure and what the colours are, for the colour bar and the legend.
    described = {
        "uncertainty_source": model["uncertainty_source"],
        "class_names": model["class_names"],
    }
    # The split the summary shows: a ground-truth column of void only would show nothing.
    split = summary_split(model["splits"])
    shown_set = next((s for s in sets if s.split == split), sets[0])
    figure = figures.sample_predictions(
        **_sample_rows([shown_set], name, first_only=False),
        **described,
        title=f"{name}: {shown_set.split} images",
    )
    written[f"samples_{shown_set.split}"] = _save(figure, folder / f"samples_{shown_set.split}.png")
    if len(sets) > 1:
        figure = figures.sample_predictions(
            **_sample_rows(sets, name, first_only=True),
            **described,
            title=f"{name}: the first image of every set",
        )
        written["samples_sets"] = _save(figure, folder / "samples_sets.png")
    return written


def _save_all(named: Iterable[tuple[str, Any]], folder: Path) -> dict[str, Path]:
    return {key: _save(figure, folder / f"{key}.png") for key, figure in named}


def _save(figure: Any, path: Path) -> Path:
    figures.save(figure, path)
    return path


# The metric_fields.SPLIT_METRICS of the printed summary table, after the model and its
# kind and before the anomaly AP.
SUMMARY_METRICS = ("miou", "pixel_accuracy", "ece", "misclassification_auroc", "aurc", "pavpu")


def summary_row(model: dict[str, Any], split: str = REFERENCE_SPLIT) -> dict[str, Any]:
    """The headline numbers of one model on `split`: "name", "kind", the SUMMARY_METRICS,
    "anomaly_ap", and "ood_auroc": {set: (best aggregator, its AUROC)}. Values are None
    when not evaluated."""
    ood = model.get("ood") or {"sets": {}}
    best = {
        name: (s["best_aggregator"], s["by_aggregator"][s["best_aggregator"]]["auroc"])
        for name, s in ood["sets"].items()
        if s["best_aggregator"] is not None
    }
    return {
        "name": model["name"],
        "kind": model["kind"],
        **{name: split_value(model, split, name) for name in SUMMARY_METRICS},
        "anomaly_ap": (model.get("anomaly") or {}).get("ap"),
        "ood_auroc": best,
    }


def summary_split(results: dict[str, dict[str, Any]]) -> str:
    """The split a model's numbers are shown on (the summary table, the sample figure):
    of its `results` ({split: metrics}), the first evaluated split with labelled pixels,
    the reference split ("test") first (Cityscapes' test split has none: then e.g. val of
    `--splits test,val`); with none labelled, the reference split when it was evaluated,
    else the first; REFERENCE_SPLIT when none was."""
    return figures.pick_split([{"splits": results}]) if results else REFERENCE_SPLIT


def format_summary(models: Sequence[dict[str, Any]], split: str | None = None) -> str:
    """Two aligned text tables: the SUMMARY_METRICS per model on `split`, then the best
    aggregator's image-level OOD AUROC per model and shifted set ("-": not evaluated),
    with the clean split each set is scored against. `split` defaults to the first
    model's `summary_split`."""
    if split is None:
        split = summary_split(models[0]["splits"] if models else {})
    rows = [summary_row(model, split) for model in models]
    numbers = [*SUMMARY_METRICS, "anomaly_ap"]
    headers = [SPLIT_METRICS[name].header for name in SUMMARY_METRICS]
    main = [["model", "kind", *headers, "anomaly AP"]]
    main += [
        [row["name"], row["kind"]]
        + ["-" if row[key] is None else f"{row[key]:.4f}" for key in numbers]
        for row in rows
    ]
    lines = [f"metrics on {split!r}:", *text_table(main)]
    sets = list(dict.fromkeys(name for row in rows for name in row["ood_auroc"]))
    if sets:
        ood = [["model", *sets]]
        for row in rows:
            cells = [row["ood_auroc"].get(s) for s in sets]
            ood.append(
                [row["name"]]
                + [
                    "-" if c is None else f"{c[1]:.3f} {figures.AGGREGATOR_LABELS[c[0]]}"
                    for c in cells
                ]
            )
        lines += ["", f"image-level OOD AUROC {ood_versus(models)} (best aggregator):"]
        lines += text_table(ood)
    flags = _distrust_cells(models, split)
    if flags:
        lines += [
            "",
            f"flagging pixels as probably wrong on {split!r}: the uncertainty threshold that "
            f"catches {DISTRUST_RECALL:.0%} of the wrong pixels (predict --distrust-above):",
            *text_table(flags),
        ]
    return "\n".join(lines)


def ood_versus(models: Sequence[dict[str, Any]]) -> str:
    """The clean splits of an OOD table's caption: "vs 'val'" when every shifted set is
    scored against one, else "vs 'test' (fog_0.02, ...) and 'val' (rain)"."""
    by_reference: dict[str, list[str]] = {}
    for model in models:
        ood = model.get("ood") or {"sets": {}}
        for name in ood["sets"]:
            reference = figures.set_reference(ood, name)
            if name not in by_reference.setdefault(reference, []):
                by_reference[reference].append(name)
    if len(by_reference) <= 1:
        return f"vs {next(iter(by_reference), REFERENCE_SPLIT)!r}"
    parts = [f"{ref!r} ({', '.join(names)})" for ref, names in by_reference.items()]
    return f"vs {', '.join(parts[:-1])} and {parts[-1]}"


# The error recall whose operating point the printed summary shows (all are in metrics.json).
DISTRUST_RECALL = 0.9


def _distrust_cells(models: Sequence[dict[str, Any]], split: str) -> list[list[str]] | None:
    """Header and one row per model with an operating point at DISTRUST_RECALL on
    `split`: threshold, share of pixels flagged, of correct pixels flagged, accuracy of
    the pixels kept. None when no model has one."""
    rows = [["model", "threshold", "pixels flagged", "correct flagged", "kept accuracy"]]
    for model in models:
        uncertainty = (model.get("splits", {}).get(split) or {}).get("uncertainty") or {}
        points = uncertainty.get("error_operating_points") or []
        point = next((p for p in points if p["target_recall"] == DISTRUST_RECALL), None)
        if point is None or point["threshold"] is None:
            continue
        if point["threshold"] == 0.0 and point["flagged"] == 1.0:
            # The errors' uncertainty lies in the lowest bin (a barely trained ensemble's
            # pred_std): a threshold that flags less lies below the bins' resolution.
            below = f"< {1 / UNCERTAINTY_BINS:g}"
            rows.append([model["name"], below, "(finer than the metrics' bins)", "", ""])
            continue
        values = (point["flagged"], point["correct_flagged"], point["kept_accuracy"])
        shares = ["-" if v is None else f"{v:.1%}" for v in values]
        rows.append([model["name"], f"{point['threshold']:.4g}", *shares])
    return rows if len(rows) > 1 else None
