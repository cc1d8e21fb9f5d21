"""Checking a generated data set (`check_dataset`): every file there, of the right size
and kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segdistill.data import shifts
from segdistill.data.labels import (
    LABEL_ID_TO_TRAIN_ID,
)
from segdistill.data.synthstreets.constants import SKY
from segdistill.data.synthstreets.files import (
    INSTANCE_CLASSES,
    META_FILE,
    PARTIAL_FILE,
    VALID_LABEL_IDS,
    SamplePaths,
    Stats,
    interior_counts,
    read_meta,
    read_png,
    train_id_counts,
)
from segdistill.errors import DataError


@dataclass(frozen=True)
class GroupReport:
    """What `check_dataset` found in one split or shifted copy.

    kind: "clean" for a split, else the shift kind; class_pixels / class_images /
    class_interior: [256] pixels of each train id (255 void), the number of images each
    occurs in, and its pixels away from any other id (`interior_counts`).
    """

    name: str
    kind: str
    root: Path
    split: str
    images: int
    class_pixels: np.ndarray
    class_images: np.ndarray
    class_interior: np.ndarray


def _groups(root: Path, meta: dict) -> list[tuple[str, Path, str, str]]:
    """(name, tree root, split, kind) of every split and shifted copy meta.json lists."""
    groups = [(split, root, split, "clean") for split in meta.get("splits", {})]
    for name, info in meta.get("shifts", {}).items():
        groups.append((name, root / info["root"], info["split"], info["kind"]))
    return groups


def _check_shape(
    path: Path, array: np.ndarray, shape: tuple[int, ...], dtype: type[np.generic]
) -> None:
    if array.shape != shape or array.dtype != dtype:
        raise DataError(
            f"{path}: expected {np.dtype(dtype).name} {shape}, found {array.dtype.name} "
            f"{array.shape}"
        )


def _check_sample(
    paths: SamplePaths, size: tuple[int, int], anomaly: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image's files; returns its [256] train id pixel counts, of all pixels
    and of the interior ones (`interior_counts`).

    Each file must decode, have the data set's size and type, and agree with the others:
    label ids from the official table, train ids = the table's mapping of them, instance
    ids id * 1000 + k only on instance classes, depth 0 (no depth) on all sky pixels.
    """
    _check_shape(paths.image, read_png(paths.image), (*size, 3), np.uint8)
    label_ids = read_png(paths.label_ids)
    _check_shape(paths.label_ids, label_ids, size, np.uint8)
    unknown = np.unique(label_ids[~VALID_LABEL_IDS[label_ids]])
    if unknown.size:
        raise DataError(f"{paths.label_ids}: label ids {unknown.tolist()} are not Cityscapes ids")
    train_ids = read_png(paths.train_ids)
    _check_shape(paths.train_ids, train_ids, size, np.uint8)
    if not np.array_equal(train_ids, LABEL_ID_TO_TRAIN_ID[label_ids]):
        raise DataError(f"{paths.train_ids}: train ids do not match {paths.label_ids.name}")
    instances = read_png(paths.instance_ids)
    _check_shape(paths.instance_ids, instances, size, np.uint16)
    owner = np.where(instances >= 1000, instances // 1000, instances)
    if not np.array_equal(owner, label_ids) or (
        np.any(~INSTANCE_CLASSES[label_ids] & (instances >= 1000))
    ):
        raise DataError(f"{paths.instance_ids}: instance ids do not match {paths.label_ids.name}")
    depth = read_png(paths.depth)
    _check_shape(paths.depth, depth, size, np.uint16)
    if np.any(depth[label_ids == SKY] != 0):
        raise DataError(f"{paths.depth}: sky pixels must have depth 0 (no finite depth)")
    if anomaly:
        mask = read_png(paths.anomaly)
        _check_shape(paths.anomaly, mask, size, np.uint8)
        if not np.array_equal(mask, shifts.anomaly_mask(label_ids)):
            raise DataError(f"{paths.anomaly}: anomaly mask does not match the void labels")
    return train_id_counts(label_ids), interior_counts(train_ids)


def _image_files(tree: Path, split: str) -> list[Path]:
    return sorted((tree / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


# What a user pointing `data info` or `data preview` at their own data should know.
# What marks a folder as a data set: SynthStreets', a Cityscapes layout, a folder data set.
DATA_SET_MARKS = (META_FILE, "leftImg8bit", "classes.yaml")


def _data_sets_below(root: Path) -> list[Path]:
    """The folders directly in `root` that look like data sets (DATA_SET_MARKS)."""
    if not root.is_dir():
        return []
    return sorted(
        path
        for path in root.iterdir()
        if path.is_dir() and any((path / mark).exists() for mark in DATA_SET_MARKS)
    )


def _data_set_above(root: Path) -> Path | None:
    """The nearest folder above `root` (up to three levels: a split, leftImg8bit/train,
    ...) that looks like a data set (DATA_SET_MARKS), else None."""
    for parent in list(root.absolute().parents)[:3]:
        if any((parent / mark).exists() for mark in DATA_SET_MARKS):
            return parent
    return None


NOT_SYNTHSTREETS = (
    "`data info` and `data preview` also take a Cityscapes-layout folder (leftImg8bit/, "
    "gtFine/) or a folder data set (classes.yaml)"
)


def not_a_data_set(root: Path) -> DataError:
    """Why `root`, without a meta.json, is no data set `data info` / `preview` can read,
    and what to give instead: its data sets when it is the folder above them, its data
    set's root when it is a split (or another part) of one, else how to make one."""
    if (root / PARTIAL_FILE).exists():
        return DataError(
            f"{root / META_FILE}: interrupted generation; rerun `segdistill data synth "
            f"--out {root}` ({NOT_SYNTHSTREETS})"
        )
    below = _data_sets_below(root)
    if below:  # a folder one level too high: point at the data sets, not at `synth`
        return DataError(
            f"{root} is not a data set (no {META_FILE}) but holds "
            f"{', '.join(map(str, below))}: give that folder"
        )
    above = _data_set_above(root)
    if above is not None:  # a split or another part of a data set: point at its root
        return DataError(f"{root} is part of the data set {above}: give that folder")
    return DataError(
        f"{root / META_FILE}: not found; run `segdistill data synth --out {root}` "
        f"({NOT_SYNTHSTREETS})"
    )


def check_dataset(
    root: str | Path, progress: bool = False, problems: list[str] | None = None
) -> tuple[dict, list[GroupReport]]:
    """Check a SynthStreets folder against its meta.json; returns (meta, one report per
    split and shifted copy). Raises DataError naming the first bad file or count, or with
    a `problems` list appends each one to it and goes on (`segdistill data info` lists
    them all); the statistics then leave the bad files out."""

    def bad(error: DataError) -> None:
        if problems is None:
            raise error
        problems.append(str(error))

    root = Path(root)
    meta = read_meta(root)
    if meta is None:
        raise not_a_data_set(root)
    size = tuple(meta["size"])
    groups = _groups(root, meta)
    expected = {name: info["images"] for name, info in meta["splits"].items()}
    expected |= {name: info["images"] for name, info in meta["shifts"].items()}
    reports = []
    for name, tree, split, kind in tqdm(groups, desc="checking", disable=not progress):
        images = _image_files(tree, split)
        whole = len(images) == expected[name]
        if not whole:
            bad(
                DataError(
                    f"{tree / 'leftImg8bit' / split}: {len(images)} images, meta.json says "
                    f"{expected[name]}"
                )
            )
        stats = Stats()
        interior = np.zeros(256, np.int64)
        for image in images:
            stem = image.name.removesuffix("_leftImg8bit.png")
            paths = SamplePaths.of(tree, split, image.parent.name, stem)
            try:
                counts, inside = _check_sample(paths, size, kind == "anomaly")
            except DataError as error:
                bad(error)
                whole = False
                continue
            stats.add(name, counts)
            interior += inside
        pixels = stats.pixels.get(name, np.zeros(256, np.int64))
        class_images = stats.images.get(name, np.zeros(256, np.int64))
        stored = meta.get("class_pixels", {}).get(name)
        # Counts without the bad files cannot match meta.json's: those files were named.
        if whole and stored is not None and stored != Stats.named(pixels):
            bad(DataError(f"{root / META_FILE}: class pixel counts of {name} do not match files"))
        reports.append(
            GroupReport(name, kind, tree, split, len(images), pixels, class_images, interior)
        )
    return meta, reports
