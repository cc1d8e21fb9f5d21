"""What every segmentation data set shares: reading and checking files, the sample contract.

A data set subclass only finds its files: it builds a sorted list of `SampleFiles` (image,
mask or None, name, and how stored mask values become class ids) and passes it, with the
class names and colours, to `SegmentationDataset.__init__`. Reading, validation, extra
dense maps and the `load` / `transform` / `__getitem__` contract live here, and
`group_consecutive`, which batches consecutive images of one size (evaluation, prediction).

Image rules (documented for users): 8-bit grayscale, palette, RGBA and other 8-bit modes are
converted to RGB (alpha is dropped); 16-bit and float images (PIL modes I;16, I, F, and
PNGs with 16 bits per colour channel, which PIL would silently cut to 8) are refused with a
DataError, because no single rescaling to 8 bits is right for all of them (12-bit sensor
data, HDR, depth); convert them to 8-bit RGB yourself. An image with an EXIF orientation
(a phone or camera JPEG stored sideways) is turned upright as image viewers show it, so its
mask must be the upright size; a mask with an EXIF orientation of its own (a tool that
copied the photo's) is turned upright too. Masks must be single-channel (PIL modes L, P,
1, I;16 or I): palette PNGs give their palette indices, and grey PNGs of 1, 2 or 4 bits
their stored values (PIL scales 2- and 4-bit grey to 0..255). Colour masks (a folder data
set's `mask_colors`, `ColorMapping`) are the other kind: RGB, RGBA (alpha dropped) or
palette PNGs whose pixels' RGB colours name the classes; a JPEG one is refused (lossy).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from segdistill.data.labels import IGNORE_INDEX
from segdistill.data.transforms import Sample, build_eval_transform, to_tensors
from segdistill.errors import DataError, preview_list

# Prefixes of PIL modes with more than 8 bits per channel or floats (I, I;16*, F): refused
# for images.
_HIGH_DEPTH_MODES = ("I", "F")
# PIL modes a mask may use; each pixel is one stored integer value.
_MASK_MODES = frozenset({"L", "P", "1", "I", "I;16", "I;16L", "I;16B"})
# PIL modes a colour mask may use; each pixel is one RGB colour (alpha dropped, palette
# indices looked up in the palette).
_COLOR_MASK_MODES = frozenset({"RGB", "RGBA", "P"})
# Lossy formats (MPO: a phone's JPEG): compression blends the colours at region edges.
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})

T = TypeVar("T")


def folders_overlap(folder: str | Path, other: str | Path) -> bool:
    """Whether two folders are one, or one lies inside the other (paths as given, made
    absolute, `..` and links resolved)."""
    a, b = Path(folder).resolve(), Path(other).resolve()
    return a.is_relative_to(b) or b.is_relative_to(a)


class LabelMapping:
    """Stored mask value -> class id (or ignore); any other stored value is an error.

    lut:   [V] class id for each stored value 0..V-1 (ignore_index for void values).
    valid: [V] bool, whether a stored value may appear at all.
    """

    # Masks store single-channel values (`read_mask(path, colors=False)`).
    colors = False

    def __init__(self, mapping: Mapping[int, int], ignore_index: int) -> None:
        size = max(mapping) + 1
        fits_uint8 = max(max(mapping.values()), ignore_index) <= 255
        self.lut = np.full(size, ignore_index, dtype=np.uint8 if fits_uint8 else np.int64)
        self.valid = np.zeros(size, dtype=bool)
        for stored, class_id in mapping.items():
            self.lut[stored] = class_id
            self.valid[stored] = True

    @classmethod
    def identity(cls, num_classes: int, ignore_index: int) -> LabelMapping:
        """Masks that store class ids 0..num_classes-1 and ignore_index directly."""
        mapping = {i: i for i in range(num_classes)}
        mapping[ignore_index] = ignore_index
        return cls(mapping, ignore_index)

    def decode(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """[H, W] stored values -> [H, W] class ids; DataError listing unknown values."""
        values = np.unique(raw)
        known = (values >= 0) & (values < len(self.valid))
        known[known] = self.valid[values[known]]
        if not known.all():
            bad = values[~known].tolist()
            allowed = np.flatnonzero(self.valid).tolist()
            raise DataError(
                f"{path}: mask holds unknown values {preview_list(bad)} "
                f"(allowed stored values: {preview_list(allowed, 40)})"
            )
        return self.lut[raw]


RGB = tuple[int, int, int]


def pack_colors(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB values 0..255 -> [...] int32 r << 16 | g << 8 | b: one number a colour,
    so that one sorted lookup maps a pixel instead of three channels compared."""
    rgb = np.asarray(rgb, dtype=np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_color(packed: int) -> RGB:
    """`pack_colors`' number -> (r, g, b)."""
    return packed >> 16, (packed >> 8) & 255, packed & 255


class ColorMapping:
    """Mask colour -> class id (or ignore), for masks that paint each class in a colour
    (`read_mask(path, colors=True)` gives their packed colours); any other colour is an
    error.

    keys: [K] sorted packed colours (`pack_colors`).
    lut:  [K] class id of each key (ignore_index for void colours).
    """

    # Masks store RGB colours (`read_mask(path, colors=True)`).
    colors = True

    def __init__(self, mapping: Mapping[RGB, int], ignore_index: int) -> None:
        by_key = {int(pack_colors(np.array(rgb))): class_id for rgb, class_id in mapping.items()}
        self.keys = np.array(sorted(by_key), dtype=np.int32)
        fits_uint8 = max(max(by_key.values()), ignore_index) <= 255
        lut = [by_key[key] for key in self.keys.tolist()]
        self.lut = np.array(lut, dtype=np.uint8 if fits_uint8 else np.int64)

    def decode(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """[H, W] packed colours -> [H, W] class ids; DataError listing unknown colours,
        the most frequent first, with their pixel counts."""
        # A binary search per pixel (log2 K steps), not np.unique's sort of all pixels.
        index = np.minimum(np.searchsorted(self.keys, raw), len(self.keys) - 1)
        known = self.keys[index] == raw
        if not known.all():
            colors, counts = np.unique(raw[~known], return_counts=True)
            order = np.argsort(-counts, kind="stable")
            unknown = [
                f"{list(unpack_color(int(colors[i])))}: {int(counts[i])} pixels" for i in order
            ]
            raise DataError(
                f"{path}: mask holds colours that are no class's colour "
                f"({preview_list(unknown, 5)}); give each its class in classes.yaml (a "
                "class's color), or list it under void_colors if it marks void pixels"
            )
        return self.lut[index]


# How a data set's masks store their classes.
MaskMapping = LabelMapping | ColorMapping


@dataclass(frozen=True, eq=False)
class ClassesSpec:
    """What a data set's classes are: the contents of a folder data set's classes.yaml,
    which also travel in every weights file a run writes (`segdistill.checkpoints`).

    names:        [C] class names, indexed by class id.
    colors:       [C, 3] uint8 display colours.
    ignore_index: class id of void pixels.
    mask_values:  stored mask value -> class id or ignore_index; None: masks store class
                  ids (and ignore_index) directly.
    mask_colors:  masks are colour images whose pixels have their class's `colors` entry
                  (`ColorMapping`); never together with mask_values.
    void_colors:  [V] (r, g, b) colours that mark void pixels in colour masks.
    """

    names: tuple[str, ...]
    colors: np.ndarray
    ignore_index: int = IGNORE_INDEX
    mask_values: Mapping[int, int] | None = None
    mask_colors: bool = False
    void_colors: tuple[RGB, ...] = ()

    @property
    def masks_hold_class_ids(self) -> bool:
        """Whether a mask stores the class ids themselves (no mask_values, no colours), as
        a Cityscapes train-id file does."""
        return self.mask_values is None and not self.mask_colors

    @cached_property
    def mapping(self) -> MaskMapping:
        """How a mask of this data set stores its classes."""
        if self.mask_colors:
            by_color: dict[RGB, int] = {color: self.ignore_index for color in self.void_colors}
            for class_id, color in enumerate(self.colors.tolist()):
                by_color[tuple(color)] = class_id
            return ColorMapping(by_color, self.ignore_index)
        if self.mask_values is None:
            return LabelMapping.identity(len(self.names), self.ignore_index)
        return LabelMapping(self.mask_values, self.ignore_index)

    def document(self) -> dict[str, object]:
        """The classes.yaml document (`segdistill.data.folder.parse_classes` reads it)."""
        document: dict[str, object] = {
            "classes": [
                {"name": name, "color": [int(c) for c in color]}
                for name, color in zip(self.names, self.colors)
            ],
            "ignore_index": self.ignore_index,
        }
        if self.mask_values is not None:
            document["mask_values"] = {int(k): int(v) for k, v in self.mask_values.items()}
        if self.mask_colors:
            document["mask_colors"] = True
        if self.void_colors:
            document["void_colors"] = [list(color) for color in self.void_colors]
        return document


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample.

    name:    unique name of the sample (the file stem), used for outputs.
    image:   the RGB image file.
    label:   the mask file, or None for an unlabeled sample (label all ignore).
    mapping: how the mask's stored values (or colours) become class ids.
    """

    name: str
    image: Path
    label: Path | None
    mapping: MaskMapping


# Reads one extra dense map of a sample: [H, W] or [K, H, W] numbers.
MapReader = Callable[[SampleFiles], np.ndarray]


def _open_image(
    path: Path, decode: bool = True, check: Callable[[Image.Image, Path], None] | None = None
) -> Image.Image:
    """Open an image file and (with `decode`) decode its pixels; DataError if it is missing,
    corrupt or (decoded) truncated. Without `decode` only its header is read. `check` sees
    the header before the pixels are decoded."""
    try:
        with Image.open(path) as img:
            if check is not None:
                check(img, path)
            if decode:
                img.load()
            return img
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except Image.DecompressionBombError as exc:  # PIL's guard, from the header's size
        raise DataError(
            f"{path}: too large to read ({exc}); split it into tiles or downscale it"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image, corrupt or truncated ({exc})") from exc


def _check_image_mode(img: Image.Image, path: Path) -> None:
    """Refuse more than 8 bits per channel (an undecoded image: its tiles name how the file
    stores pixels, e.g. "RGB;16B" for a 48-bit PNG that PIL decodes as 8-bit RGB)."""
    stored = [str(tile.args) for tile in getattr(img, "tile", [])]  # ImageFile only
    if img.mode.startswith(_HIGH_DEPTH_MODES) or any(";16" in args for args in stored):
        mode = img.mode if img.mode.startswith(_HIGH_DEPTH_MODES) else f"{img.mode} 16-bit"
        raise DataError(
            f"{path}: {mode} image (16-bit or float) is not supported; convert it to 8-bit RGB"
        )


# EXIF orientations (tag 0x0112) that turn the image by 90 degrees: width and height swap.
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def exif_orientation(img: Image.Image, path: Path) -> int:
    """The EXIF orientation of the image opened from `path` (1: stored upright), from the
    EXIF block its header gave (`getexif` would decode a PNG's pixels to look for a late
    one). A block that cannot be decoded is a DataError: which way is up is unknown."""
    block = img.info.get("exif")
    if not block:
        return 1
    exif = Image.Exif()
    try:
        exif.load(block)
        return int(exif.get(_EXIF_ORIENTATION, 1))
    except (SyntaxError, OSError, ValueError, TypeError, struct.error) as error:
        raise DataError(
            f"{path}: damaged EXIF block ({error}), so its orientation is unknown; "
            "save the image again without EXIF"
        ) from error


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as `read_image` returns it, from its header alone."""
    return _upright_size(_open_image(path, decode=False), path)


def group_consecutive(
    items: Iterable[T], key: Callable[[T], Hashable], max_size: int
) -> Iterator[list[T]]:
    """The items in order, in lists of at most `max_size` consecutive items of one `key`.

    Batches images of one size (key: their size), which stack into one [B, C, H, W]
    tensor without resizing or padding. Lazy: a group is given out when the next item
    cannot join it (or the items end), so a stream of images is read one at a time and
    only one group and one item are held.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    group: list[T] = []
    group_key: Hashable = None
    for item in items:
        item_key = key(item)
        if group and (len(group) == max_size or item_key != group_key):
            yield group
            group = []
        if not group:
            group_key = item_key
        group.append(item)
    if group:
        yield group


def _upright_size(img: Image.Image, path: Path) -> tuple[int, int]:
    """(H, W) of the image opened from `path` as `read_image` returns it: after its EXIF
    orientation."""
    width, height = img.size
    return (width, height) if exif_orientation(img, path) in _QUARTER_TURNS else (height, width)


def _check_mask_mode(img: Image.Image, path: Path, colors: bool) -> None:
    """Refuse a mask whose mode is not the kind `colors` says (module docstring)."""
    if not colors and img.mode not in _MASK_MODES:
        raise DataError(
            f"{path}: mask has mode {img.mode}; store class values in a single-channel "
            "(8-bit grey or palette) PNG, or, for masks that paint each class in its "
            "classes.yaml color, set mask_colors: true in a folder data set's classes.yaml"
        )
    if colors and img.mode not in _COLOR_MASK_MODES:
        raise DataError(
            f"{path}: mask has mode {img.mode}, but classes.yaml sets mask_colors: colour "
            "masks are RGB, RGBA or palette PNGs painted in the classes' colors; for masks "
            "that store class values in one channel, remove mask_colors"
        )
    if colors:
        # A 48-bit colour PNG would be cut to 8 bits per channel: colours of no class.
        _check_image_mode(img, path)
    if colors and img.format in _LOSSY_FORMATS:
        raise DataError(
            f"{path}: a {img.format} colour mask; save it as PNG (JPEG compression blends "
            "the colours at region edges into colours of no class)"
        )


def _check_mask_size(mask_size: tuple[int, int], files: SampleFiles, size: tuple[int, int]) -> None:
    """Sizes as (H, W), upright."""
    if mask_size != size:
        orientation = exif_orientation(_open_image(files.image, decode=False), files.image)
        # The stored image has the mask's size: a mask drawn on the sideways pixels.
        turned = (
            f" (turned upright by its EXIF orientation {orientation}; stored "
            f"{size[0]}x{size[1]}: its mask must be drawn upright, as viewers show the image)"
            if orientation in _QUARTER_TURNS
            else ""
        )
        raise DataError(
            f"mask {files.label} is {mask_size[1]}x{mask_size[0]} (WxH) but image "
            f"{files.image} is {size[1]}x{size[0]}{turned}"
        )


def check_headers(samples: Sequence[SampleFiles]) -> list[tuple[int, int]]:
    """Read the header of every image and mask (not the pixels: about 0.2 ms a file) and
    raise the DataError `load` would: a missing or unreadable file, a 16-bit image, a mask
    that is not single-channel or not the size of its image. Run before training, so that
    a bad validation file stops the run before its first epoch, not after it.

    Returns each sample's image size (H, W) as `read_image` returns it, in order."""
    sizes = []
    for files in samples:
        image = _open_image(files.image, decode=False, check=_check_image_mode)
        size = _upright_size(image, files.image)
        if files.label is not None:
            mask = _open_image(files.label, decode=False)
            _check_mask_mode(mask, files.label, files.mapping.colors)
            _check_mask_size(_upright_size(mask, files.label), files, size)
        sizes.append(size)
    return sizes


# How to turn an image stored with each EXIF orientation upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _open_upright(path: Path, check: Callable[[Image.Image, Path], None]) -> Image.Image:
    """The decoded image of `path` turned as its EXIF orientation says (`check` sees the
    header first). The orientation is read from the header, as `image_size` and
    `check_headers` read it: decoding a PNG would add an EXIF block stored after its pixels."""
    orientation = 1

    def check_and_orient(img: Image.Image, path: Path) -> None:
        nonlocal orientation
        check(img, path)
        orientation = exif_orientation(img, path)

    img = _open_image(path, check=check_and_orient)
    return img.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else img


def read_image(path: Path) -> np.ndarray:
    """An image file -> uint8 [H, W, 3] RGB (see the module docstring for the mode rules)."""
    img = _open_upright(path, _check_image_mode)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


# Grey PNGs of 2 or 4 bits a pixel, by how PIL decodes them: scaled to 0..255 (a 2-bit
# mask's class 1 becomes 85, its class 3 255, void), while the stored value is the class.
_LOW_BIT_SCALE = {"L;2": 85, "L;4": 17}


def read_mask(path: Path, colors: bool = False) -> np.ndarray:
    """A single-channel mask file -> [H, W] integer stored values, upright by its EXIF
    orientation as its image is (a tool that copies a photo's EXIF onto its mask). With
    `colors`, a colour mask file -> [H, W] int32 packed RGB colours (`pack_colors`)."""
    scale = 1

    def check(img: Image.Image, path: Path) -> None:
        nonlocal scale
        _check_mask_mode(img, path, colors)
        for tile in getattr(img, "tile", []):  # ImageFile only; emptied by decoding
            scale = _LOW_BIT_SCALE.get(str(tile.args), scale)

    img = _open_upright(path, check)
    if colors:
        return pack_colors(np.asarray(img.convert("RGB")))
    raw = np.asarray(img)
    if raw.dtype == bool:  # a 1-bit mask
        return raw.astype(np.uint8)
    return raw // scale if scale > 1 else raw


def _as_channel_first(array: np.ndarray, name: str, files: SampleFiles) -> np.ndarray:
    """A map reader's [H, W] or [K, H, W] result -> float32 [K, H, W]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(
            f"map {name!r} of {files.image}: expected [H, W] or [K, H, W], got shape {array.shape}"
        )
    return array.astype(np.float32, copy=False)


class SegmentationDataset(torch.utils.data.Dataset):
    """Base data set: `load(index)` reads a raw sample, `__getitem__` transforms it.

    Raw sample (numpy): image uint8 [H, W, 3], label uint8/int64 [H, W] class ids with
    `ignore_index` for void, maps {name: float32 [K, H, W]}, name, index.
    `__getitem__` returns `to_tensors(transform(load(index)))`. Wrappers extend `load`
    (e.g. add cached teacher maps to `sample["maps"]`) and reuse `transform`.

    transform:   joint transform of a raw sample (None: `build_eval_transform()`).
    maps:        extra dense maps, {name: reader(SampleFiles) -> [H, W] or [K, H, W]}.
    classes_file: the classes file the data set was read with (a folder data set's), kept
                 for `classes_spec` with its mask settings (mask_values, mask_colors,
                 void_colors); the samples' own mappings decode the masks.
    masks_without_image: label files no sample uses (a loader that lists them sets them,
                 for `data info` to report).
    unread_masks: image files among the labels that are not read as labels (a folder
                 data set's masks saved as JPEG), for `data info` to report.
    """

    masks_without_image: Sequence[Path] = ()
    unread_masks: Sequence[Path] = ()

    def __init__(
        self,
        samples: Sequence[SampleFiles],
        classes: Sequence[str],
        colors: np.ndarray,
        ignore_index: int = IGNORE_INDEX,
        transform: Callable[[Sample], Sample] | None = None,
        maps: Mapping[str, MapReader] | None = None,
        classes_file: ClassesSpec | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.colors = np.asarray(colors, dtype=np.uint8)
        self.ignore_index = ignore_index
        self.classes_file = classes_file
        self.transform = transform if transform is not None else build_eval_transform()
        self.map_readers = dict(maps or {})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def classes_spec(self) -> ClassesSpec:
        """Names, colours, ignore value and mask settings, as the run's weights store them."""
        if self.classes_file is not None:
            return self.classes_file
        return ClassesSpec(self.classes, self.colors, self.ignore_index)

    @property
    def names(self) -> list[str]:
        """Sample names in index order."""
        return [files.name for files in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        """The raw numpy sample `index`, checked against its image (sizes, label values)."""
        files = self.samples[index]
        image = read_image(files.image)
        return {
            "image": image,
            "label": self._load_label(files, image.shape[:2]),
            "maps": self._load_maps(files, image.shape[:2]),
            "name": files.name,
            "index": index,
        }

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.transform(self.load(index)))

    def _load_label(self, files: SampleFiles, size: tuple[int, int]) -> np.ndarray:
        """[H, W] class ids of `files`; all ignore for an unlabeled sample."""
        if files.label is None:
            return np.full(size, self.ignore_index, dtype=files.mapping.lut.dtype)
        raw = read_mask(files.label, files.mapping.colors)
        _check_mask_size(raw.shape, files, size)
        return files.mapping.decode(raw, files.label)

    def _load_maps(self, files: SampleFiles, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """{name: float32 [K, H, W]} from the map readers, each checked against the image size."""
        maps = {}
        for name, reader in self.map_readers.items():
            array = _as_channel_first(reader(files), name, files)
            if array.shape[1:] != size:
                raise DataError(
                    f"map {name!r} of {files.image} is {array.shape[2]}x{array.shape[1]} (WxH) "
                    f"but the image is {size[1]}x{size[0]}"
                )
            maps[name] = array
        return maps
