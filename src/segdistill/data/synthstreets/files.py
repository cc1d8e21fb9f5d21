"""Files: names, reading and writing, and the generation of a data set (`generate`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from scipy.ndimage import maximum_filter, minimum_filter
from tqdm import tqdm

from segdistill.atomic import atomic_write_text, remove_unfinished_writes
from segdistill.data import shifts
from segdistill.data.labels import (
    CLASS_NAMES,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
)
from segdistill.data.shifts import ShiftSpec
from segdistill.data.synthstreets.anomalies import add_anomalies
from segdistill.data.synthstreets.constants import (
    CITIES,
    DEPTH_UNITS_PER_METRE,
    FRAME,
    GENERATOR_VERSION,
    MAX_SIZE,
    MIN_SIZE,
    SPLIT_CODES,
    SPLITS,
)
from segdistill.data.synthstreets.render import Frame, render
from segdistill.data.synthstreets.sampling import sample_scene
from segdistill.data.synthstreets.styles import DEFAULT_STYLE, NEWCITY_STYLE, Style
from segdistill.errors import DataError, preview_list
from segdistill.interrupts import ignore_ctrl_c
from segdistill.output_paths import make_folder

META_FILE = "meta.json"
# Present while a generation runs; a folder with it and no meta.json is an interrupted run.
PARTIAL_FILE = ".synthstreets-incomplete"
# Folders a generation writes (and a forced or resumed generation removes first).
OUTPUT_DIRS = ("leftImg8bit", "gtFine", "shifts")
SHIFTS_DIR = "shifts"
VALID_LABEL_IDS = np.zeros(256, dtype=bool)
VALID_LABEL_IDS[[label_id for label_id in id2label if label_id >= 0]] = True
INSTANCE_CLASSES = np.zeros(256, dtype=bool)
INSTANCE_CLASSES[[i for i, label in id2label.items() if i >= 0 and label.hasInstances]] = True
# Workers are forked where the OS can: spawning would re-import the package (and torch,
# seconds per worker) in each of them.
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class SynthConfig:
    """What a SynthStreets data set is made of; equal configs give byte-identical files.

    size: (height, width) of every image; train / val / test: images per split;
    seed: the master seed (>= 0); shifts: shift kinds written for the test split
    (`segdistill.data.shifts.SHIFT_KINDS`).
    object_scale: drawing size of poles, signs, traffic lights, fence bars, people and
    two-wheelers relative to life size (1 = realistic). At 128x256 a real pole is 1-2
    pixels wide, below what a network predicting at stride 4 resolves; the quick configs
    draw them 2.5 times larger so that small networks learn those classes in CPU minutes.
    crowd: multiplies how often the rare classes occur (people, riders, two-wheelers and
    the motorcycles' share of them, trucks, buses, walls, fences); 1 = the Cityscapes-like
    imbalance.
    """

    size: tuple[int, int] = (128, 256)
    train: int = 600
    val: int = 100
    test: int = 100
    seed: int = 0
    shifts: tuple[str, ...] = shifts.SHIFT_KINDS
    object_scale: float = 1.0
    crowd: float = 1.0

    def __post_init__(self) -> None:
        height, width = self.size
        if not (MIN_SIZE[0] <= height <= MAX_SIZE[0] and MIN_SIZE[1] <= width <= MAX_SIZE[1]):
            raise DataError(
                f"image size {height}x{width} is outside {MIN_SIZE[0]}x{MIN_SIZE[1]} .. "
                f"{MAX_SIZE[0]}x{MAX_SIZE[1]} (height x width)"
            )
        for split in SPLITS:
            if self.count(split) < 0:
                raise DataError(f"--{split} must be >= 0, got {self.count(split)}")
        if not any(self.count(split) for split in SPLITS):
            raise DataError(f"no images asked for: give one of {', '.join(SPLITS)} above 0")
        if self.seed < 0:
            raise DataError(f"seed must be >= 0, got {self.seed}")
        for name, value, high in (
            ("object_scale", self.object_scale, 4.0),
            ("crowd", self.crowd, 4.0),
        ):
            if not 0.5 <= value <= high:
                raise DataError(f"{name} must be in [0.5, {high}], got {value}")
        shifts.expand_shifts(self.shifts)  # raises on unknown kinds

    def count(self, split: str) -> int:
        """Number of images of a split."""
        return {"train": self.train, "val": self.val, "test": self.test}[split]

    def shift_specs(self) -> list[ShiftSpec]:
        """The shifted copies to write (none without test images)."""
        return shifts.expand_shifts(self.shifts) if self.test else []

    def params(self) -> dict:
        """The parameters that decide the files (compared to refuse or skip a rewrite)."""
        return {
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "size": list(self.size),
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "shifts": [spec.name for spec in self.shift_specs()],
            "object_scale": self.object_scale,
            "crowd": self.crowd,
        }

    def style(self, base: Style) -> Style:
        """`base` (DEFAULT_STYLE or NEWCITY_STYLE) with this data set's object scale and
        crowd."""
        return replace(base, object_scale=self.object_scale, crowd=self.crowd)


def image_name(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image `index` of a split; cities take turns, seq counts per city."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME:06d}"


@dataclass(frozen=True)
class SamplePaths:
    """The files of one image in a Cityscapes-layout tree rooted at `root`."""

    image: Path
    label_ids: Path
    train_ids: Path
    instance_ids: Path
    depth: Path
    anomaly: Path

    @classmethod
    def of(cls, root: Path, split: str, city: str, stem: str) -> SamplePaths:
        images = root / "leftImg8bit" / split / city
        labels = root / "gtFine" / split / city
        return cls(
            image=images / f"{stem}_leftImg8bit.png",
            label_ids=labels / f"{stem}_gtFine_labelIds.png",
            train_ids=labels / f"{stem}_gtFine_labelTrainIds.png",
            instance_ids=labels / f"{stem}_gtFine_instanceIds.png",
            depth=labels / f"{stem}_depth.png",
            anomaly=labels / f"{stem}_gtFine_anomaly.png",
        )

    def ground_truth(self) -> tuple[Path, Path, Path, Path]:
        """The label and depth files that a photometric shift shares with the clean image."""
        return (self.label_ids, self.train_ids, self.instance_ids, self.depth)


def shift_root(root: Path, spec_name: str) -> Path:
    """The Cityscapes-layout tree of one shifted copy."""
    return root / SHIFTS_DIR / spec_name


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """[H, W] metres (inf = sky) -> uint16 centimetres, 0 for the sky."""
    cm = np.clip(np.rint(np.nan_to_num(depth, posinf=0.0) * DEPTH_UNITS_PER_METRE), 0, 65535)
    cm[np.isfinite(depth) & (cm == 0)] = 1  # a finite depth never reads as sky
    return cm.astype(np.uint16)


def decode_depth(stored: np.ndarray) -> np.ndarray:
    """uint16 centimetres -> [H, W] float32 metres, inf where 0 (the sky)."""
    depth = stored.astype(np.float32) / DEPTH_UNITS_PER_METRE
    depth[stored == 0] = np.inf
    return depth


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as an array, fully decoded; DataError naming the file if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def read_depth(path: str | Path) -> np.ndarray:
    """[H, W] float32 depth in metres from a `_depth.png` (inf for the sky)."""
    return decode_depth(read_png(path))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Run-length zlib: noisy photos barely compress anyway, and it is the fastest strategy
    # (a third faster than the default at level 1, and smaller for our images).
    Image.fromarray(array).save(path, compress_level=1, compress_type=zlib.Z_RLE)


def write_frame(frame: Frame, paths: SamplePaths, anomaly: bool = False) -> None:
    """Write an image, its three label files and depth (and the anomaly mask)."""
    _write_png(paths.image, frame.image)
    _write_png(paths.label_ids, frame.label_ids)
    _write_png(paths.train_ids, LABEL_ID_TO_TRAIN_ID[frame.label_ids])
    _write_png(paths.instance_ids, frame.instance_ids)
    _write_png(paths.depth, encode_depth(frame.depth))
    if anomaly:
        _write_png(paths.anomaly, shifts.anomaly_mask(frame.label_ids))


def _share_file(source: Path, target: Path) -> None:
    """Give `target` the content of `source`: a hard link where the file system allows
    (no second copy on disk), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def image_rng(seed: int, split: str, index: int, stream: str = "scene") -> np.random.Generator:
    """The generator of one image's `stream` ("scene", or a shift name for its noise)."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index, zlib.crc32(stream.encode())])


def train_id_counts(label_ids: np.ndarray) -> np.ndarray:
    """[256] pixel count of each train id (255 = void)."""
    return np.bincount(LABEL_ID_TO_TRAIN_ID[label_ids].ravel(), minlength=256)


# `data info`'s interior share: a pixel whose neighbours up to this many pixels away (a
# square) all share its train id. The share says how much of a class is more than a
# boundary at the data set's resolution, where an ensemble's members tend to disagree.
INTERIOR_RADIUS = 2


def interior_counts(train_ids: np.ndarray, radius: int = INTERIOR_RADIUS) -> np.ndarray:
    """[256] pixel count of each train id over the pixels whose (2 radius + 1)^2
    neighbourhood holds only that id; train_ids: uint8 [H, W]. The image edge is not a
    boundary (the neighbourhood is clipped to the image)."""
    size = 2 * radius + 1
    uniform = maximum_filter(train_ids, size, mode="nearest") == minimum_filter(
        train_ids, size, mode="nearest"
    )
    return np.bincount(train_ids[uniform], minlength=256)


@dataclass(frozen=True)
class _Job:
    root: Path
    config: SynthConfig
    split: str
    index: int


def _run_job(job: _Job) -> dict[str, np.ndarray]:
    """Render and write one image (and, for test images, its shifted copies).

    Returns {group: [256] train id pixel counts}, groups being the split and shift names.
    """
    config = job.config
    height, width = config.size
    city, stem = image_name(job.split, job.index)
    scene = sample_scene(image_rng(config.seed, job.split, job.index), config.style(DEFAULT_STYLE))
    frame = render(scene, height, width)
    paths = SamplePaths.of(job.root, job.split, city, stem)
    write_frame(frame, paths)
    counts = {job.split: train_id_counts(frame.label_ids)}
    for spec in config.shift_specs() if job.split == "test" else []:
        target = SamplePaths.of(shift_root(job.root, spec.name), job.split, city, stem)
        rng = image_rng(config.seed, job.split, job.index, spec.name)
        if spec.photometric:
            depth = decode_depth(encode_depth(frame.depth))  # exactly what the file holds
            _write_png(target.image, shifts.apply_photometric(spec, frame.image, depth, rng))
            for source, copy in zip(paths.ground_truth(), target.ground_truth()):
                _share_file(source, copy)
            counts[spec.name] = counts[job.split]
            continue
        if spec.kind == "newcity":
            newcity = config.style(NEWCITY_STYLE)
            shifted = sample_scene(image_rng(config.seed, job.split, job.index), newcity)
        else:
            shifted = add_anomalies(scene, rng)
        shifted_frame = render(shifted, height, width)
        write_frame(shifted_frame, target, anomaly=spec.kind == "anomaly")
        counts[spec.name] = train_id_counts(shifted_frame.label_ids)
    return counts


class Stats:
    """Per group: summed train id pixel counts and the number of images each id occurs in."""

    def __init__(self) -> None:
        self.pixels: dict[str, np.ndarray] = {}
        self.images: dict[str, np.ndarray] = {}

    def add(self, group: str, counts: np.ndarray) -> None:
        self.pixels[group] = self.pixels.get(group, 0) + counts
        self.images[group] = self.images.get(group, 0) + (counts > 0)

    @staticmethod
    def named(counts: np.ndarray) -> dict[str, int]:
        """[256] counts by train id -> {class name: count}, "void" for the ignore id."""
        named = {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)}
        named["void"] = int(counts[IGNORE_INDEX])
        return named

    def as_meta(self) -> dict:
        """class_pixels, class_frequencies (fraction of all pixels) and class_images (images
        a class occurs in), by group and class name."""
        out: dict[str, dict] = {"class_pixels": {}, "class_frequencies": {}, "class_images": {}}
        for group, pixels in self.pixels.items():
            total = max(int(pixels.sum()), 1)
            named = self.named(pixels)
            out["class_pixels"][group] = named
            out["class_frequencies"][group] = {n: round(c / total, 6) for n, c in named.items()}
            out["class_images"][group] = self.named(self.images[group])
        return out


def _jobs(root: Path, config: SynthConfig) -> list[_Job]:
    return [
        _Job(root, config, split, index) for split in SPLITS for index in range(config.count(split))
    ]


def _render_all(root: Path, config: SynthConfig, workers: int, progress: bool) -> Stats:
    """Run every job, in worker processes when workers > 1, with a progress bar."""
    jobs = _jobs(root, config)
    stats = Stats()
    bar = tqdm(total=len(jobs), desc="synthstreets", unit="img", disable=not progress)
    if workers > 1:
        context = multiprocessing.get_context(START_METHOD)
        with context.Pool(workers, initializer=ignore_ctrl_c) as pool:
            results = pool.imap(_run_job, jobs, chunksize=4)
            for counts in results:
                _collect(stats, counts, bar)
    else:
        for job in jobs:
            _collect(stats, _run_job(job), bar)
    bar.close()
    return stats


def _collect(stats: Stats, counts: dict[str, np.ndarray], bar: tqdm) -> None:
    for group, group_counts in counts.items():
        stats.add(group, group_counts)
    bar.update()


def _meta(config: SynthConfig, stats: Stats) -> dict:
    """The meta.json content: parameters, layout, counts and class statistics."""
    return {
        "generator": "segdistill synthstreets",
        "version": GENERATOR_VERSION,
        "params": config.params(),
        "seed": config.seed,
        "size": list(config.size),
        "label_files": {
            "labelIds": "Cityscapes label ids, uint8",
            "labelTrainIds": "train ids 0..18, 255 void, uint8",
            "instanceIds": "uint16, label id * 1000 + k for instance classes, else label id",
            "depth": "{stem}_depth.png in gtFine: uint16 centimetres along the optical axis, "
            "0 = sky",
            "anomaly": "{stem}_gtFine_anomaly.png (anomaly shift): 1 anomaly, 0 in-distribution,"
            " 255 other void",
        },
        "splits": {
            split: {"images": config.count(split), "cities": list(CITIES[split])}
            for split in SPLITS
        },
        "shifts": {
            spec.name: {
                "kind": spec.kind,
                "beta": spec.beta,
                "split": "test",
                "images": config.test,
                "root": f"{SHIFTS_DIR}/{spec.name}",
            }
            for spec in config.shift_specs()
        },
        **stats.as_meta(),
    }


def read_meta(root: Path) -> dict | None:
    """The meta.json of a data set folder, or None when there is none."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def _write_json(path: Path, content: dict) -> None:
    """Write JSON all or nothing (`atomic_write_text`), so a reader never sees half."""
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def _clear(root: Path) -> None:
    """Remove what a generation writes (never anything else in the folder)."""
    for name in OUTPUT_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)
    for name in (META_FILE, PARTIAL_FILE):
        (root / name).unlink(missing_ok=True)
    if root.is_dir():
        remove_unfinished_writes(root)  # of those two files, by a killed generation


def _check_target(root: Path, config: SynthConfig, force: bool) -> bool:
    """Whether to generate into `root`: False when the same data set is already there;
    DataError when another SynthStreets set is there without force, or folders of a data
    set that is not SynthStreets (Cityscapes' `leftImg8bit/`, ...) whatever force says."""
    if root.exists() and not root.is_dir():
        # Named by its path only: `data synth --out` and an experiment's data.root lead here.
        raise DataError(f"{root} is a file, not a folder: the data set needs a folder there")
    meta = read_meta(root)
    if meta is not None:
        if meta.get("params") == config.params():
            return False
        if not force:
            raise DataError(
                f"{root} already holds a different SynthStreets data set "
                f"(params {json.dumps(meta.get('params'))}, asked for "
                f"{json.dumps(config.params())}); delete it, replace it (`segdistill data "
                "synth --force`) or generate elsewhere (--out, or data.root in an experiment)"
            )
        return True
    interrupted = (root / PARTIAL_FILE).exists()
    foreign = [name for name in OUTPUT_DIRS if (root / name).exists()]
    if foreign and not interrupted:
        # Not even with force: such folders are usually a Cityscapes download or the
        # user's own data, which a generation would delete beyond recovery.
        raise DataError(
            f"{root} holds {', '.join(foreign)} but no {META_FILE}: not a SynthStreets data "
            "set (a Cityscapes tree or your own data?), so it is never replaced, not even "
            "with --force; pick another --out (data.root in an experiment), or delete "
            f"those folders yourself if they really are a SynthStreets set"
        )
    others = [] if interrupted or not root.is_dir() else _visible_entries(root)
    if others:
        # A run directory or a folder of data sets: the set's folders would be mixed with
        # what is there (and a later --force would delete what it took for its own).
        raise DataError(
            f"{root} holds {preview_list(others, 3)} but no SynthStreets data set: it is "
            f"generated into a new or empty folder; pick another --out (data.root in an "
            f"experiment), e.g. {root / 'synthstreets'}"
        )
    return True


def _visible_entries(folder: Path) -> list[str]:
    """Sorted names in `folder`, hidden ones (.DS_Store, ._*) left out."""
    return sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))


def generate(
    root: str | Path,
    config: SynthConfig,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> bool:
    """Write a SynthStreets data set into `root`. Returns False when the same data set
    (same parameters in meta.json) is already there and nothing was done.

    An interrupted generation (no meta.json, the partial marker present) is redone from
    scratch; a different SynthStreets set is replaced only with `force`, and folders
    that are not a SynthStreets set never.
    """
    root = Path(root)
    if not _check_target(root, config, force):
        return False
    _clear(root)
    make_folder(root)
    _write_json(root / PARTIAL_FILE, config.params())
    stats = _render_all(root, config, max(1, workers), progress)
    _write_json(root / META_FILE, _meta(config, stats))
    (root / PARTIAL_FILE).unlink()
    return True
