"""A data set from a folder of images and a folder of masks, matched by path and stem.

    images_dir/[sub/]{stem}.png|.jpg|.jpeg   RGB images (see segdistill.data.base for modes)
    masks_dir/[sub/]{stem}{mask_suffix}      single-channel PNG masks, or colour PNG masks
                                             with `mask_colors` (mask_suffix ".png", in
                                             any case: .PNG too; other image files
                                             there, JPEG masks, are refused: lossy)
    classes.yaml                             the classes, e.g.

        classes:                 # class id = position in this list
          - {name: road, color: [128, 64, 128]}
          - {name: car, color: [0, 0, 142]}
        ignore_index: 255        # optional (255); the class id of void pixels, <= 255
        mask_values:             # optional: stored mask value -> class id or ignore_index
          0: 255
          7: 0
          26: 1

Without `mask_values` a mask stores class ids (and `ignore_index`) directly. Any other stored
value is an error naming the file and the values.

Colour masks (a labelling tool's export; not Cityscapes' `*_color.png`, whose void polegroup
and license plate have the colours of pole and car) paint each pixel in its
class's `color`; `mask_colors: true` reads them (RGB, RGBA with alpha dropped, or palette
PNGs), and `void_colors` lists the colours of void pixels:

        classes:
          - {name: road, color: [128, 64, 128]}    # every class its own colour
          - {name: car, color: [0, 0, 142]}
        mask_colors: true        # instead of mask_values, never with it
        void_colors: [[0, 0, 0]] # optional: colours read as ignore_index

A colour that is no class's and not void is an error naming the file, the colours and their
pixel counts.

Sub-folders (e.g. one per city or sequence) are searched; a mask sits at the same path
below `masks_dir` as its image below `images_dir`, and a sample is named by that path
without its suffix ("cityA/img2"), so equal file names in two sub-folders stay two samples.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from segdistill.data.base import (
    RGB,
    ClassesSpec,
    MapReader,
    SampleFiles,
    SegmentationDataset,
    folders_overlap,
)
from segdistill.data.labels import IGNORE_INDEX
from segdistill.data.transforms import Sample
from segdistill.errors import DataError, preview_list, read_yaml

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A folder data set's layout (`data.format: folder`): root/{split}/images,
# root/{split}/masks and root/classes.yaml.
CLASSES_FILE = "classes.yaml"
IMAGES_DIR, MASKS_DIR = "images", "masks"


def is_folder_data_set(root: Path) -> bool:
    """Whether `root` holds a folder data set (its classes file), not the Cityscapes layout."""
    return (root / CLASSES_FILE).is_file()


def folder_splits(root: Path) -> list[str]:
    """The splits of a folder data set: its sub-folders that hold an images folder."""
    return sorted(d.name for d in root.iterdir() if (d / IMAGES_DIR).is_dir())


def files_below(folder: Path) -> list[Path]:
    """Every file in `folder` and its sub-folders, symbolic links to folders followed (a
    data set's city folders linked from shared storage; `Path.rglob` skips them), each
    folder once (a link back up does not loop), sorted by path. Hidden files and folders
    are left out: macOS writes `._a.png` beside `a.png` on foreign disks, which is no
    image, and `.cache/` holds no data. Paths are below `folder` as written."""
    found: list[Path] = []
    seen: set[str] = set()
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(directory, name) for name in files if not name.startswith(".")]
    return sorted(found)


def is_image(path: Path) -> bool:
    """Whether `path` names an image file that folders are searched for (IMAGE_SUFFIXES,
    any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def images_below(folder: Path) -> list[Path]:
    """Every image file (`is_image`) in `folder` and its sub-folders, sorted by path
    (`files_below`: links followed, hidden files left out)."""
    return [p for p in files_below(folder) if is_image(p)]


def masks_below(folder: Path, suffix: str = ".png") -> list[tuple[str, Path]]:
    """(name, path) of every file in `folder` and its sub-folders whose name ends in
    `suffix` (any case), sorted by path, hidden ones left out (`images_below`); the name
    is the path below the folder without the suffix (an image's name, `FolderDataset`);
    none when the folder is absent."""
    if not folder.is_dir():
        return []
    found = [p for p in files_below(folder) if p.name.lower().endswith(suffix.lower())]
    return [(p.relative_to(folder).as_posix()[: -len(suffix)], p) for p in found]


def unread_masks_problem(unread: Sequence[Path], mask_suffix: str) -> str:
    """Why the files `unread` in a masks folder are not read, and what to do."""
    return (
        f"{len(unread)} files in a masks folder are not read as masks ({preview_list(unread, 3)}):"
        f" masks are lossless PNG files named like their images, ending in {mask_suffix} "
        "(JPEG changes the class values at region edges); save them so"
    )


def require_images_below(folder: Path, what: str) -> list[Path]:
    """`images_below(folder)`, which must find one: DataError naming `what` (the setting
    that gave the folder) and the folder otherwise."""
    if not folder.is_dir():
        raise DataError(f"{what}: {folder} is not a folder")
    images = images_below(folder)
    if not images:
        raise DataError(
            f"{what}: {folder} holds no png or jpg image (searched it and its sub-folders)"
        )
    return images


_CLASSES_KEYS = {"classes", "ignore_index", "mask_values", "mask_colors", "void_colors"}
# The largest value a 16-bit mask stores.
MAX_MASK_VALUE = 65535


def load_classes(path: str | Path) -> ClassesSpec:
    """Read and check a classes YAML file (format in the module docstring)."""
    return parse_classes(_read_yaml(Path(path)), path)


def parse_classes(document: Mapping[str, Any], where: str | Path) -> ClassesSpec:
    """Check a classes document (a classes.yaml's contents, or `ClassesSpec.document()`)
    and return its spec; DataError naming `where` and the entry otherwise."""
    unknown = sorted(set(document) - _CLASSES_KEYS)
    if unknown:
        raise DataError(f"{where}: unknown keys {unknown}; allowed: {sorted(_CLASSES_KEYS)}")
    entries = document.get("classes")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{where}: 'classes' must be a non-empty list of {{name, color}} entries")
    names = tuple(_class_name(where, i, entry) for i, entry in enumerate(entries))
    for index, name in enumerate(names):
        if name in names[:index]:
            # Results name classes (per-class IoU, "<split>/iou/<class>" in the report).
            raise DataError(
                f"{where}: classes[{index}] is named {name!r} like classes"
                f"[{names.index(name)}]; every class needs its own name"
            )
    colors = np.array([_class_color(where, i, entry) for i, entry in enumerate(entries)], np.uint8)
    ignore_index = document.get("ignore_index", IGNORE_INDEX)
    # At most 255: class ids and void share the 8 bits a survey or a saved map holds.
    if len(names) > 255:
        raise DataError(f"{where}: {len(names)} classes; a folder data set holds at most 255")
    if not isinstance(ignore_index, int) or not len(names) <= ignore_index <= 255:
        raise DataError(
            f"{where}: ignore_index must be an integer from the number of classes "
            f"({len(names)}) to 255, got {ignore_index!r}"
        )
    mask_values = document.get("mask_values")
    if mask_values is not None:
        mask_values = _check_mask_values(where, mask_values, len(names), ignore_index)
    mask_colors = document.get("mask_colors", False)
    if not isinstance(mask_colors, bool):
        raise DataError(f"{where}: mask_colors must be true or false, got {mask_colors!r}")
    void_colors = _check_void_colors(where, document.get("void_colors", []))
    if mask_colors:
        if mask_values is not None:
            raise DataError(
                f"{where}: mask_values and mask_colors contradict each other (masks store "
                "either values or colours); keep the one your masks use"
            )
        _check_colors_distinct(where, names, colors, void_colors)
    elif void_colors:
        raise DataError(f"{where}: void_colors needs mask_colors: true (masks of colours)")
    return ClassesSpec(names, colors, ignore_index, mask_values, mask_colors, void_colors)


def _read_yaml(path: Path) -> dict[str, Any]:
    document = read_yaml(path, "classes file", DataError)
    if not isinstance(document, dict):
        raise DataError(f"{path}: expected a mapping with a 'classes' list")
    return document


def _class_name(where: str | Path, index: int, entry: object) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DataError(f"{where}: classes[{index}] needs a 'name' string, got {entry!r}")
    return entry["name"]


def _is_color(color: object) -> TypeGuard[list[int]]:
    """Whether `color` is [r, g, b] of ints 0..255."""
    return (
        isinstance(color, list)
        and len(color) == 3
        and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
    )


def _class_color(where: str | Path, index: int, entry: dict[str, Any]) -> list[int]:
    color = entry.get("color")
    if not _is_color(color):
        raise DataError(
            f"{where}: classes[{index}].color must be [r, g, b] (0..255), got {color!r}"
        )
    return color


def _check_void_colors(where: str | Path, void_colors: object) -> tuple[RGB, ...]:
    """`void_colors` as (r, g, b) tuples; DataError naming a malformed entry."""
    if not isinstance(void_colors, list):
        raise DataError(f"{where}: void_colors must be a list of [r, g, b], got {void_colors!r}")
    for index, color in enumerate(void_colors):
        if not _is_color(color):
            raise DataError(
                f"{where}: void_colors[{index}] must be [r, g, b] (0..255), got {color!r}"
            )
    return tuple((r, g, b) for r, g, b in void_colors)


def _check_colors_distinct(
    where: str | Path, names: Sequence[str], colors: np.ndarray, void_colors: Sequence[RGB]
) -> None:
    """With colour masks a colour names one class, or void: DataError naming the entries
    that share one (a mask pixel of that colour would be ambiguous)."""
    first: dict[RGB, int] = {}
    for index, color in enumerate(map(tuple, colors.tolist())):
        if color in first:
            raise DataError(
                f"{where}: classes[{index}] ({names[index]}) has the color {list(color)} of "
                f"classes[{first[color]}] ({names[first[color]]}); with mask_colors every "
                "class needs its own color"
            )
        first[color] = index
    for index, color in enumerate(void_colors):
        if color in first:
            raise DataError(
                f"{where}: void_colors[{index}] {list(color)} is the color of "
                f"classes[{first[color]}] ({names[first[color]]}); a colour is a class's or "
                "void, not both"
            )


def _check_mask_values(
    where: str | Path, mask_values: object, num_classes: int, ignore_index: int
) -> dict[int, int]:
    """`mask_values` as {stored value >= 0: class id in 0..C-1 or ignore_index}."""
    if not isinstance(mask_values, dict) or not mask_values:
        raise DataError(
            f"{where}: mask_values must be a non-empty mapping stored value -> class id"
        )
    allowed = set(range(num_classes)) | {ignore_index}
    for stored, class_id in mask_values.items():
        # A mask file holds 8- or 16-bit values; a larger one is a typo, and the lookup
        # table it would need (one entry per value up to it) could exhaust the memory.
        in_range = isinstance(stored, int) and 0 <= stored <= MAX_MASK_VALUE
        if not in_range or class_id not in allowed:
            raise DataError(
                f"{where}: mask_values entry {stored!r}: {class_id!r} must map a stored value "
                f"0..{MAX_MASK_VALUE} (masks are 8- or 16-bit images) to a class id "
                f"0..{num_classes - 1} or ignore_index {ignore_index}"
            )
    return dict(mask_values)


class FolderDataset(SegmentationDataset):
    """Images and masks matched by path and stem (module docstring), classes from a YAML
    file; sorted by path.

    masks_dir:       None for images without any masks (all labels ignore, for prediction or
                     unlabeled distillation).
    mask_suffix:     what follows the stem in a mask's file name (".png", "_mask.png", ...).
    allow_unlabeled: images without a mask get an all-ignore label, and masks without an
                     image are listed in `masks_without_image`, instead of an error (what
                     `data info` reports).
    maps:            extra dense maps {name: reader(SampleFiles) -> [H, W] | [K, H, W]}.
    """

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path | None,
        classes_yaml: str | Path,
        transform: Callable[[Sample], Sample] | None = None,
        *,
        mask_suffix: str = ".png",
        allow_unlabeled: bool = False,
        maps: Mapping[str, MapReader] | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.mask_suffix = mask_suffix
        if self.masks_dir is not None and folders_overlap(self.images_dir, self.masks_dir):
            # Every image below images_dir is listed, so masks there would be read as
            # images (and images as masks), each then "without a mask".
            raise DataError(
                f"images {self.images_dir} and masks {self.masks_dir} are one folder or one "
                "holds the other: put the masks in a folder of their own (a split's layout: "
                f"{IMAGES_DIR}/ and {MASKS_DIR}/ side by side)"
            )
        spec = load_classes(classes_yaml)
        mapping = spec.mapping
        masks = self._masks_by_name()
        unread = self._unread_masks()
        samples = [
            SampleFiles(name, image, masks.pop(name, None), mapping)
            for name, image in _find_images(self.images_dir)
        ]
        orphans = sorted(masks.values())  # the masks no image took
        if self.masks_dir is not None and not allow_unlabeled:
            if unread:
                raise DataError(unread_masks_problem(unread, self.mask_suffix))
            self._check_every_mask_has_its_image(orphans)
            self._check_all_labeled(samples)
        super().__init__(
            samples=samples,
            classes=spec.names,
            colors=spec.colors,
            ignore_index=spec.ignore_index,
            transform=transform,
            maps=maps,
            classes_file=spec,
        )
        self.masks_without_image = orphans
        self.unread_masks = unread

    @classmethod
    def split(
        cls,
        root: str | Path,
        split: str,
        transform: Callable[[Sample], Sample] | None = None,
        **kwargs: Any,
    ) -> FolderDataset:
        """The `split` of the folder data set at `root` (its layout: `CLASSES_FILE`)."""
        root = Path(root)
        if root.is_dir() and not (root / split / IMAGES_DIR).is_dir():
            found = folder_splits(root)
            raise DataError(
                f"{root} has no split {split!r} ({root / split / IMAGES_DIR} does not exist; "
                f"its splits: {', '.join(found) or 'none'}): name the split to read "
                "(data.train_split / data.val_split for training, --splits for evaluate)"
            )
        return cls(
            root / split / IMAGES_DIR,
            root / split / MASKS_DIR,
            root / CLASSES_FILE,
            transform,
            **kwargs,
        )

    def mask_path(self, name: str) -> Path | None:
        """Where the mask of the image named `name` ("cityA/img2": its path below
        images_dir without suffix) belongs; None without a masks folder."""
        return self.masks_dir / f"{name}{self.mask_suffix}" if self.masks_dir else None

    def _masks_by_name(self) -> dict[str, Path]:
        """{image name: mask file} of the files below masks_dir ending in `mask_suffix` in
        any case (cameras and tools write .PNG as often as .png, and the images' suffixes
        match in any case too); DataError for two masks of one name (a.png and a.PNG)."""
        if self.masks_dir is None:
            return {}
        masks: dict[str, Path] = {}
        for name, path in masks_below(self.masks_dir, self.mask_suffix):
            if name in masks:
                raise DataError(
                    f"{self.masks_dir}: two masks for the image named {name!r}: "
                    f"{masks[name].name} and {path.name}; keep one"
                )
            masks[name] = path
        return masks

    def _unread_masks(self) -> list[Path]:
        """The image files below masks_dir that do not end in `mask_suffix` (a.jpg beside
        the .png masks): masks in a format not read, which would leave their images
        without a mask, or the split unlabelled, in silence."""
        if self.masks_dir is None or not self.masks_dir.is_dir():
            return []
        suffix = self.mask_suffix.lower()
        return [p for p in images_below(self.masks_dir) if not p.name.lower().endswith(suffix)]

    def _check_every_mask_has_its_image(self, orphans: list[Path]) -> None:
        """DataError naming the masks no image matches: their images are missing, in a
        format not read (e.g. .tif), or misnamed, and would be left out in silence."""
        assert self.masks_dir is not None
        if orphans:
            suffix = self.mask_suffix
            name = orphans[0].relative_to(self.masks_dir).as_posix()[: -len(suffix)]
            formats = "/".join(IMAGE_SUFFIXES)
            raise DataError(
                f"masks without an image in {self.masks_dir}: {len(orphans)} "
                f"({[p.name for p in orphans[:5]]}; expected e.g. {self.images_dir / name}"
                f" with one of {formats}): add or rename their images, or remove the masks"
            )

    def _check_all_labeled(self, samples: list[SampleFiles]) -> None:
        missing = [s.name for s in samples if s.label is None]
        if missing and len(missing) == len(samples):
            # A split without any mask is unlabelled (`data info` says so), not a broken one.
            raise DataError(
                f"{self.images_dir}: an unlabelled split ({len(samples)} images, no mask; "
                f"expected e.g. {self.mask_path(missing[0])}): training and evaluation need "
                "a mask per image; choose a labelled split (evaluate --splits val), or give "
                "these images to a student as distill.unlabeled_root"
            )
        if missing:
            raise DataError(
                f"images without a mask in {self.images_dir}: {len(missing)} of {len(samples)} "
                f"({missing[:5]}; expected e.g. {self.mask_path(missing[0])}); "
                "give every image of the split its mask; images without one can teach a "
                "student as distill.unlabeled_root"
            )


def _find_images(images_dir: Path) -> list[tuple[str, Path]]:
    """(name, path) of every image in a folder and its sub-folders, sorted by path; the
    name is the path below the folder without suffix. DataError if there is none, or if
    two share a name (img.png and img.jpg)."""
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist or is not a folder")
    images = images_below(images_dir)
    if not images:
        patterns = ", ".join(f"*{s}" for s in IMAGE_SUFFIXES)
        raise DataError(f"no images in {images_dir} or its sub-folders matching {patterns}")
    named = [(p.relative_to(images_dir).with_suffix("").as_posix(), p) for p in images]
    duplicates = sorted(s for s, n in Counter(name for name, _ in named).items() if n > 1)
    if duplicates:
        raise DataError(f"{images_dir}: several images share the names {duplicates[:5]}")
    return named
