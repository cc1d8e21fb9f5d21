"""Predict on image files with any model source and write pictures for people and machines.

`predict_files(predictor, images, out)` runs `Predictor.predict` (a student, a baseline, an
ensemble or an MC-dropout teacher, see `segdistill.predictor`) over image files and writes,
per image NAME (`InputImage`: its path below the input folder without the suffix, so the
outputs mirror the input tree; a file given by itself, its stem), one PNG into one folder
per kind (`outputs`: all kinds by default), so that a folder of video frames becomes one
frame sequence per kind:

    pred/NAME.png           predicted class ids (8-bit; 16-bit beyond 256 classes)
    seg/NAME.png            class colours (the training data set's, stored in the weights;
                            the Cityscapes palette for weights written without them)
    overlay/NAME.png        the image blended 50/50 with the class colours
    uncertainty/NAME.png    heat map on a FIXED scale: magma colour map, 0 (black) to `vmax`
                            (pale yellow, default 0.5); larger values saturate
    uncertainty16/NAME.png  raw uncertainty as a 16-bit PNG: u = value / 65535, u in [0, 1]
    accuracy/NAME.png       when a label exists: binary accuracy map, white = wrong,
                            black = right, grey (128) = void / ignore
    distrust/NAME.png       with `distrust_above` T: white (255) where the uncertainty is
                            >= T (probably wrong), black elsewhere
    panel/NAME.png          image, label, prediction, accuracy map and the heat map with its
                            colour bar, side by side
    predict.json            the model, the encodings above and, per image, its input, label,
                            image-level OOD scores and (with a detector) its OOD flag
    ood_scores.png          with a detector: the images' scores against the reference
                            images' and the threshold
    predict.unfinished.jsonl  while a run writes (and after one that failed or was
                            stopped): the files it and earlier unfinished runs began to
                            write, so that the next run removes those it does not write
                            again (`previous_outputs`); gone once predict.json is written

Is an image unlike the training data? Every image gets one score per aggregator of its
uncertainty map (`segdistill.metrics.ood.image_scores`, Holder & Shafique 5.3; for a
per-class head, of their eq. 8 map, the mean over the classes: `Prediction.ood_map`). With an
`ImageOODDetector` (`segdistill.ood_detector`), fitted by `fit_ood_detector` on
in-distribution reference images such as the validation split, an image is flagged when
its score is above the threshold that at most a share `fpr` of the references exceed.

Choices the papers leave open:
- The colour scale is fixed (not per image) so pictures of different images and models
  compare. Its default top, 0.5, is the largest possible pred_std (a population std of a
  probability), the uncertainty of ensembles, MC dropout and the DUDES / Holder students
  that learn it. A baseline's 1 - max softmax (up to 1 - 1/C) and a head (up to 1) can go
  above it: the picture saturates there, the 16-bit file keeps the value.
- The accuracy map is the one of Holder & Shafique (Fig. 2) and DUDES (Fig. 3): white =
  wrong. DUDES paints void pixels white as well; here they are grey so that white means
  only "wrong", and the map is binary on the pixels that have a label.

Inputs: image files, folders (searched with their sub-folders for .png / .jpg / .jpeg, in
natural order so frame_2 comes before frame_10) or folders of video frames. segdistill has
no video decoder (it does not depend on imageio or PyAV); a video file is refused with the
ffmpeg command that extracts its frames. Images follow the rules of
`segdistill.data.base.read_image`: grayscale, palette and RGBA images are converted to RGB
(with a notice; alpha is dropped), an image with an EXIF orientation is turned upright
(with a notice), 16-bit and float images are refused naming the file.

Labels (`labels`, a file for a single image or a folder searched with its sub-folders): for
an image `X_leftImg8bit*.png` the Cityscapes files `X_gtFine_labelTrainIds.png` (preferred)
or `X_gtFine_labelIds.png`, else a PNG with the image's stem; of several such files, the
one at the image's place in the tree (labels/NAME's folder). Where the training data set's
classes file has mask_values or mask_colors (stored in the weights, or given as `classes`),
they read every label file (with mask_colors: colour masks); otherwise labelIds are mapped
to train ids by the official table (`segdistill.data.cityscapes.label_mappings`) and other
files hold class ids and `ignore_index` directly. Unknown values (or colours), and class ids
the network does not predict, are an error naming the file (`read_label`).

Sizes: images of any size. An image is padded at the bottom and right with 0 (the ImageNet
mean colour after normalisation, as training crops are padded) to a multiple of
`input_multiple` (32, or the largest encoder stride when that is larger) and every output
is cropped back. Only consecutive images of one padded size share a batch, so an image's
result never depends on the batch it is in (global pooling would see other padding).
With `size`, the normalised image is resized bilinearly to H x W first (as training's
RandomScale) and probabilities and uncertainty are resized back to the image size, so
every output has the size of its image and aligns with it and its label.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin
from torch import Tensor
from tqdm import tqdm

from segdistill import __version__, figures
from segdistill.atomic import atomic_write, atomic_write_text
from segdistill.data.base import (
    ClassesSpec,
    LabelMapping,
    MaskMapping,
    exif_orientation,
    group_consecutive,
    image_size,
    read_image,
    read_mask,
)
from segdistill.data.cityscapes import (
    LABEL_IDS_SUFFIX,
    TRAIN_IDS_SUFFIX,
    base_name,
    label_mappings,
)
from segdistill.data.folder import (
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    MASKS_DIR,
    files_below,
    is_image,
)
from segdistill.data.labels import IGNORE_INDEX, TRAIN_ID_COLORS, colorize
from segdistill.data.transforms import build_eval_transform
from segdistill.defaults import DEFAULT_AGGREGATOR, DEFAULT_FPR, OUTPUT_KINDS, UNCERTAINTY_VMAX
from segdistill.errors import ConfigError, DataError
from segdistill.figures import (
    ACCURACY_RIGHT,
    ACCURACY_VOID,
    ACCURACY_WRONG,
    accuracy_map,
)
from segdistill.interrupts import stop_on_ctrl_c
from segdistill.jsonfiles import write_json
from segdistill.metrics.ood import image_scores
from segdistill.models.decoders import resize
from segdistill.ood_detector import ImageOODDetector, check_aggregator, check_fpr
from segdistill.output_paths import check_output_folder
from segdistill.predictor import Predictor, check_class_count, input_multiple

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
UNCERTAINTY_COLORMAP = "magma"
UINT16_MAX = 65535
OVERLAY_ALPHA = 0.5
SUMMARY_FILE = "predict.json"
UNFINISHED_FILE = "predict.unfinished.jsonl"  # one JSON string (a file under --out) per line
DISTRUST_FLAGGED = 255  # "probably wrong" in distrust/NAME.png; 0 elsewhere
OOD_FIGURE = "ood_scores.png"
_MODE_NAMES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale + alpha (alpha dropped)",
    "P": "palette",
    "PA": "palette + alpha (alpha dropped)",
    "RGBA": "RGBA (alpha dropped)",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
}


# ----------------------------------------------------------------------------- inputs


def _natural_key(path: Path) -> list[object]:
    """Sort key comparing digit runs as numbers: frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _earlier_outputs(files: Sequence[Path], exclude: Path | None) -> list[Path]:
    """The output folders of earlier predict runs among the folders of `files` (each holds
    predict.json or predict.unfinished.jsonl), but `exclude`, this run's own."""
    marks = [file for file in files if file.name in (SUMMARY_FILE, UNFINISHED_FILE)]
    return sorted({mark.parent for mark in marks if not _inside(mark, exclude)})


# Label folders of the data set layouts, and the image folder beside each: a folder given
# as input that holds a split (root/val) or a whole data set holds its masks too.
LABEL_FOLDERS = {MASKS_DIR: IMAGES_DIR, "gtFine": "leftImg8bit"}


def _is_label_file(file: Path, folder: Path) -> bool:
    """Whether `file` (below `folder`) lies in a data set's label folder: a `masks/` with
    an `images/` beside it, or a `gtFine/` with a `leftImg8bit/` beside it."""
    parent = file.parent
    while parent != folder and folder in parent.parents:
        images = LABEL_FOLDERS.get(parent.name)
        if images is not None and (parent.parent / images).is_dir():
            return True
        parent = parent.parent
    return False


class InputImage(NamedTuple):
    """An image file to predict and the NAME its outputs take (`output_files`): its path
    below the input folder it was found in, without the suffix ("drive_1/000001" for
    frames/drive_1/000001.png found in frames), or for a file given by itself its stem."""

    path: Path
    name: str


def find_images(inputs: Sequence[Path], exclude: Path | None = None) -> list[InputImage]:
    """Image files of `inputs` (files, or folders searched with their sub-folders), in the
    order given, each folder in natural order; files under `exclude` (the output folder)
    are skipped in folders and refused when named, as their outputs could overwrite them.
    DataError for a missing path, a video file, a folder without images or two images with
    the same output name (`InputImage`; their outputs would overwrite each other)."""
    images: list[InputImage] = []
    for path in map(Path, inputs):
        # A folder of frames may be named like a video (drive.mp4/).
        if path.suffix.lower() in VIDEO_SUFFIXES and not path.is_dir():
            raise DataError(
                f"{path}: segdistill has no video decoder (it does not depend on imageio or "
                f"PyAV); extract the frames first, e.g. `mkdir frames && ffmpeg -i {path} "
                "frames/%06d.png`, and pass the folder of frames"
            )
        if path.is_dir():
            every = files_below(path)  # walked once: a folder on a network disk is slow
            below = [file for file in every if is_image(file)]
            _notice_other_formats(path, every)
            found = [file for file in below if not _inside(file, exclude)]
            earlier = _earlier_outputs(every, exclude)
            if earlier:  # an earlier run's --out inside the folder: its pictures, not inputs
                kept = [file for file in found if not any(_inside(file, e) for e in earlier)]
                print(
                    f"notice: skipped the {len(found) - len(kept)} images of earlier predict "
                    f"outputs in {', '.join(map(str, earlier))}",
                    file=sys.stderr,
                )
                found = kept
            labels = [file for file in found if _is_label_file(file, path)]
            if labels:  # root/val of a folder data set: its masks are no input images
                print(
                    f"notice: skipped the {len(labels)} masks of the data set in {path} "
                    f"({', '.join(sorted({str(f.parent) for f in labels})[:3])}); its images "
                    "are read",
                    file=sys.stderr,
                )
                masks = set(labels)
                found = [file for file in found if file not in masks]
            if not found:
                patterns = ", ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
                where = " or in earlier predict outputs" if earlier else ""
                skipped = f"; its {len(below)} images lie in the output folder {exclude}{where}"
                raise DataError(
                    f"{path}: no images found (searched it and its sub-folders for {patterns}"
                    f"{skipped if below else ''})"
                )
            relative = sorted((file.relative_to(path) for file in found), key=_natural_key)
            images += [
                InputImage(path / file, file.with_suffix("").as_posix()) for file in relative
            ]
        elif path.is_file():
            if _inside(path, exclude):
                raise DataError(
                    f"{path} lies in the output folder {exclude}, where its outputs could "
                    "overwrite it: choose another --out"
                )
            images.append(InputImage(path, path.stem))
        else:
            raise DataError(f"{path}: no such file or folder")
    check_output_names(images)
    return images


# Image formats PIL reads that folders are not searched for (IMAGE_SUFFIXES are): a file
# of them given by name is read.
OTHER_IMAGE_SUFFIXES = (".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def _notice_other_formats(folder: Path, files: Sequence[Path]) -> None:
    """A notice naming the `files` (those below `folder`) in OTHER_IMAGE_SUFFIXES, which a
    folder search leaves out (a folder of .bmp frames beside .png ones lost them in
    silence)."""
    other = Counter(
        file.suffix.lower() for file in files if file.suffix.lower() in OTHER_IMAGE_SUFFIXES
    )
    if other:
        counts = ", ".join(f"{count} {suffix}" for suffix, count in sorted(other.items()))
        searched = "/".join(IMAGE_SUFFIXES)
        print(
            f"notice: {folder} also holds images that folders are not searched for ({counts}; "
            f"searched: {searched}): convert them, or give each file by name",
            file=sys.stderr,
        )


def as_input_images(images: Sequence[InputImage | Path]) -> list[InputImage]:
    """`images` as `InputImage`s: a bare path is named by its stem, as a file given by
    itself is."""
    return [
        image if isinstance(image, InputImage) else InputImage(Path(image), Path(image).stem)
        for image in images
    ]


def check_output_names(images: Sequence[InputImage]) -> None:
    """DataError naming an image found twice (a folder given with one of its sub-folders)
    or two images of the same output name: their outputs would overwrite each other."""
    seen: dict[str, Path] = {}
    found: dict[Path, str] = {}
    for image in images:
        path = image.path.resolve()
        if path in found:
            raise DataError(
                f"{image.path} is among the inputs twice (named {found[path]!r} and "
                f"{image.name!r}): a file or folder given twice, or a folder given with one of "
                "its sub-folders"
            )
        found[path] = image.name
        if image.name in seen:
            if seen[image.name].parent == image.path.parent:  # x.png and x.jpg
                hint = "rename one of them, or convert it and keep one"
            else:
                hint = (
                    "predict them in separate runs (or --out folders), or pass the folder "
                    "that holds both, whose sub-folders then tell them apart"
                )
            raise DataError(
                f"{seen[image.name]} and {image.path} would both write outputs named "
                f"{image.name!r}; {hint}"
            )
        seen[image.name] = image.path


def load_image(path: Path) -> tuple[np.ndarray, str | None]:
    """(uint8 [H, W, 3] RGB, notice or None): `read_image`'s rules, plus a notice saying
    how an image that was not RGB was converted or that it was turned upright."""
    image = read_image(path)
    with Image.open(path) as img:  # the header only: read_image has decoded it already
        mode, orientation = img.mode, exif_orientation(img, path)
    changes = [] if mode == "RGB" else [f"{_MODE_NAMES.get(mode, mode)} image converted to RGB"]
    if orientation != 1:
        changes.append(f"turned upright by its EXIF orientation {orientation}")
    return image, f"{path}: {'; '.join(changes)}" if changes else None


def match_labels(images: Sequence[InputImage], labels: Path) -> dict[Path, Path | None]:
    """The label file of each image path (None when there is none), see the module
    docstring. `labels` is one file (only for a single image) or a folder searched
    recursively."""
    if labels.is_file():
        if len(images) != 1:
            raise DataError(
                f"labels {labels} is one file but there are {len(images)} images; give the "
                "folder that holds their labels"
            )
        return {images[0].path: labels}
    if not labels.is_dir():
        raise DataError(f"labels {labels}: no such file or folder")
    by_name: dict[str, list[Path]] = {}
    for file in files_below(labels):
        # Keyed with a lower-case suffix: masks saved as .PNG match as the images' do.
        if file.suffix.lower() == ".png":
            by_name.setdefault(file.with_suffix(".png").name, []).append(file)
    matches: dict[Path, Path | None] = {}
    for path, name in images:
        candidates = (
            f"{base_name(path)}{TRAIN_IDS_SUFFIX}",
            f"{base_name(path)}{LABEL_IDS_SUFFIX}",
            f"{path.stem}.png",
        )
        # A labels folder that also holds the images must not match an image to itself.
        found = [
            [file for file in by_name.get(candidate, []) if file.resolve() != path.resolve()]
            for candidate in candidates
        ]
        files = next((files for files in found if files), [])
        if len(files) > 1:
            # Labels laid out as the images are (labels/drive_1/000001.png for the image
            # named drive_1/000001) tell apart images of one file name in other sub-folders.
            mirrored = [file for file in files if file.parent == labels / Path(name).parent]
            files = mirrored if len(mirrored) == 1 else files
        if len(files) > 1:
            raise DataError(
                f"{path}: several label files match under {labels}: {', '.join(map(str, files))}"
            )
        matches[path] = files[0] if files else None
    return matches


def read_label(
    path: Path,
    size: tuple[int, int],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    stored: MaskMapping | None = None,
) -> np.ndarray:
    """A label file -> int64 [H, W] class ids (`ignore_index` for void), checked against
    the image size (H, W), the values its kind may hold and the network's `num_classes`.
    `stored`: how the labels store the classes, where a classes file says so (its
    mask_values or mask_colors): it reads every file, whatever its name, since a
    Cityscapes-named file of a folder data set holds what its classes file says. Without
    it a Cityscapes file (`*_gtFine_labelIds.png`, `*_gtFine_labelTrainIds.png`) is read
    by the official table and any other holds class ids."""
    # A lower-case suffix, as `match_labels` matches them: X_gtFine_labelIds.PNG is Cityscapes'.
    name = path.with_suffix(path.suffix.lower()).name
    suffix = next((s for s in (LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX) if name.endswith(s)), None)
    if stored is not None:
        mapping = stored
    elif suffix:
        mapping = label_mappings(ignore_index)[suffix]
    else:
        mapping = LabelMapping.identity(num_classes, ignore_index)
    raw = read_mask(path, mapping.colors)
    if raw.shape != size:
        raise DataError(
            f"label {path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
            f"{size[1]}x{size[0]}"
        )
    ids = mapping.decode(raw, path).astype(np.int64)
    beyond = np.unique(ids[(ids != ignore_index) & ((ids < 0) | (ids >= num_classes))])
    if beyond.size:
        # Cityscapes' 19 train ids against a network of fewer classes: scored, every such
        # pixel would count as wrong.
        raise DataError(
            f"label {path} holds class ids {beyond.tolist()[:10]} but the network predicts "
            f"{num_classes} classes (0..{num_classes - 1}); give the classes file that says "
            "how these labels store the classes (--classes)"
        )
    return ids


# ------------------------------------------------------------------------- inference


def network_size(
    image_shape: Sequence[int], multiple: int, size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The size an image of shape [H, W, ...] enters the network with: `size` (else its
    own H x W) rounded up to `multiple`."""
    height, width = size if size is not None else (image_shape[0], image_shape[1])
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


class ImagePrediction(NamedTuple):
    """One image's prediction at its own size: classes int64 [H, W], uncertainty and
    ood_map float32 [H, W] (`Prediction.ood_map`; the very same array object as
    uncertainty where the model scores OOD images from it, i.e. all but a per-class head)."""

    classes: np.ndarray
    uncertainty: np.ndarray
    ood_map: np.ndarray


def predict_arrays(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    multiple: int | None = None,
    size: tuple[int, int] | None = None,
) -> list[ImagePrediction]:
    """uint8 [H, W, 3] RGB images of one `network_size` -> an `ImagePrediction` per image,
    in one `predict` call (see the module docstring): normalised, padded to `multiple`
    (None: the predictor's `input_multiple`) or resized to `size`, as `segdistill predict`
    runs them.

    Images of one network size are padded to it each on its own, so an image's result
    does not depend on the others in its batch (global pooling sees the same padding; an
    MC-dropout model predicts one image per call, `Predictor.predict`)."""
    if multiple is None:
        multiple = input_multiple(predictor.segmenters())
    sizes = {network_size(image.shape, multiple, size) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"images of one batch must share a network size, got {sorted(sizes)}")
    height, width = sizes.pop()
    normalise = build_eval_transform()
    tensors = []
    for image in images:
        x = torch.from_numpy(normalise({"image": image})["image"]).permute(2, 0, 1)[None]
        tensors.append(resize(x, size) if size is not None else x)
    batch = torch.cat(
        [F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])) for x in tensors]
    )
    prediction = predictor.predict(batch.to(predictor.device))
    # Only a per-class head scores OOD images from a map of its own (eq. 8); every other
    # model's OOD map IS its uncertainty, and each image gets that one array for both.
    separate_ood_map = prediction.ood_map is not prediction.uncertainty

    def image_map(maps: Tensor, i: int, h: int, w: int, image: np.ndarray) -> np.ndarray:
        crop = maps[i : i + 1, :, :h, :w]
        crop = resize(crop, image.shape[:2]) if size is not None else crop
        return crop[0, 0].float().cpu().numpy()

    results = []
    for i, (image, x) in enumerate(zip(images, tensors)):
        h, w = x.shape[-2:]
        probs = prediction.probs[i : i + 1, :, :h, :w]
        probs = resize(probs, image.shape[:2]) if size is not None else probs
        uncertainty = image_map(prediction.uncertainty, i, h, w, image)
        ood_map = image_map(prediction.ood_map, i, h, w, image) if separate_ood_map else uncertainty
        results.append(ImagePrediction(probs.argmax(dim=1)[0].cpu().numpy(), uncertainty, ood_map))
    return results


def batches(
    paths: Sequence[Path],
    batch_size: int,
    multiple: int,
    size: tuple[int, int] | None,
    notify: Callable[[str], None],
    skip: Callable[[Path, DataError], None] | None = None,
) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Read the images in order and group consecutive ones of one `network_size` into
    batches of at most `batch_size` (path, uint8 [H, W, 3]); conversions go to `notify`.
    An image that cannot be read raises its DataError, or with `skip` is handed to it and
    left out."""

    def read() -> Iterator[tuple[Path, np.ndarray]]:
        for path in paths:
            try:
                image, notice = load_image(path)
            except DataError as error:
                if skip is None:
                    raise
                skip(path, error)
                continue
            if notice:
                notify(notice)
            yield path, image

    yield from group_consecutive(
        read(), lambda item: network_size(item[1].shape, multiple, size), batch_size
    )


# ---------------------------------------------------------------------------- pictures


def class_palette(num_classes: int) -> np.ndarray:
    """[C, 3] uint8 colours: the Cityscapes train-id colours, then fixed pseudo-random
    colours for classes beyond 19."""
    extra = max(0, num_classes - len(TRAIN_ID_COLORS))
    more = np.random.default_rng(0).integers(0, 256, size=(extra, 3), dtype=np.uint8)
    return np.concatenate([TRAIN_ID_COLORS, more])[:num_classes]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3] image and class colours -> their blend (alpha = colour weight)."""
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.rint(blend).astype(np.uint8)


def heat_map(uncertainty: np.ndarray, vmax: float = UNCERTAINTY_VMAX) -> np.ndarray:
    """[H, W] uncertainty -> uint8 [H, W, 3], the colour map on the fixed scale 0..vmax."""
    colormap = matplotlib.colormaps[UNCERTAINTY_COLORMAP]
    rgba = colormap(np.clip(uncertainty / vmax, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def uncertainty_to_uint16(uncertainty: np.ndarray) -> np.ndarray:
    """[H, W] uncertainty in [0, 1] -> uint16, round(u * 65535)."""
    return np.rint(np.clip(uncertainty, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)


def draw_panel(
    path: Path,
    title: str,
    pictures: Sequence[tuple[str, np.ndarray]],
    uncertainty: np.ndarray,
    vmax: float = UNCERTAINTY_VMAX,
) -> None:
    """One row: the (caption, uint8 picture) panels, then the uncertainty on the fixed
    scale 0..vmax with its colour bar; written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = uncertainty.shape
    cols = len(pictures) + 1
    # Inches per panel at 100 dpi: about half the image's pixels, within 3.2..6.4 so that
    # small images stay legible and a row of Cityscapes panels stays a few thousand pixels.
    panel_w = min(max(width / 200, 3.2), 6.4)
    figure = Figure(figsize=(panel_w * cols + 0.6, panel_w * height / width + 0.7))
    FigureCanvasAgg(figure)
    # The title and captions are file names, as written; the layout measures them.
    with figures.plain_text():
        axes = figure.subplots(1, cols, squeeze=False)[0]
        for ax, (caption, picture) in zip(axes, pictures):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(caption, fontsize=9)
        shown = axes[-1].imshow(uncertainty, cmap=UNCERTAINTY_COLORMAP, vmin=0.0, vmax=vmax)
        axes[-1].set_title("uncertainty", fontsize=9)
        bar = figure.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.02, extend="max")
        # The one scale of every image (not stretched per image): comparable across them.
        bar.set_label(f"fixed scale 0 to {vmax:g}, higher saturates", fontsize=8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
    figures.save(figure, path, dpi=100)


def _save_png(path: Path, array: np.ndarray, text: dict[str, str] | None = None) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    # All or nothing: a killed run leaves no truncated picture behind.
    atomic_write(path, lambda file: Image.fromarray(array).save(file, format="PNG", pnginfo=info))


# ------------------------------------------------------------------------------- runs


@dataclass
class PredictSummary:
    """What a `predict_files` run did: images written, how many had a label, how many the
    OOD detector flagged, the pixels predicted and how many were marked probably wrong
    (with `distrust_above`), the notices (converted images, images without a label) and
    the summary file."""

    images: int = 0
    labelled: int = 0
    flagged: int = 0
    pixels: int = 0
    distrusted: int = 0
    notices: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    summary: Path | None = None


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")


# Notices printed per run: a folder of 10 000 grey frames printed 10 000 lines.
PRINTED_NOTICES = 5


def _notifier(notices: list[str], rest: str) -> Callable[[str], None]:
    """A `notify` that keeps every notice in `notices` and prints the first
    PRINTED_NOTICES above the progress bar, then once that the others are not printed
    (`rest`: where they are)."""

    def notify(notice: str) -> None:
        notices.append(notice)
        if len(notices) <= PRINTED_NOTICES:
            tqdm.write(f"notice: {notice}", file=sys.stderr)
        elif len(notices) == PRINTED_NOTICES + 1:
            tqdm.write(f"notice: further notices are not printed ({rest})", file=sys.stderr)

    return notify


def scores_of_map(ood_map: np.ndarray) -> dict[str, float]:
    """[H, W] OOD map of one image (`ImagePrediction.ood_map`) -> {aggregator: its
    image-level OOD score}."""
    scores = image_scores(torch.from_numpy(ood_map)[None, None])
    return {name: float(value[0]) for name, value in scores.items()}


def score_images(
    predictor: Predictor,
    paths: Sequence[Path],
    aggregator: str,
    *,
    batch_size: int = 1,
    size: tuple[int, int] | None = None,
    progress: bool = True,
    desc: str = "OOD scores",
) -> list[float]:
    """The `aggregator` image score of each image file, as `predict_files` scores its
    images (the same padding, `size` and aggregation over the image's own pixels).
    Conversion notices are printed, the first PRINTED_NOTICES of them."""
    _check_batch_size(batch_size)
    multiple = input_multiple(predictor.segmenters())
    notify = _notifier([], "they are of the same kinds as those above")
    scores: list[float] = []
    with tqdm(total=len(paths), desc=desc, unit="image", disable=not progress) as bar:
        for batch in stop_on_ctrl_c(batches(paths, batch_size, multiple, size, notify)):
            results = predict_arrays(predictor, [image for _, image in batch], multiple, size)
            scores += [scores_of_map(result.ood_map)[aggregator] for result in results]
            bar.update(len(batch))
    return scores


def fit_ood_detector(
    predictor: Predictor,
    references: Sequence[Path],
    *,
    aggregator: str = DEFAULT_AGGREGATOR,
    fpr: float = DEFAULT_FPR,
    batch_size: int = 1,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> ImageOODDetector:
    """An `ImageOODDetector` for `predictor` from in-distribution reference image files
    (from `find_images`), scored by `score_images`."""
    check_aggregator(aggregator)  # both before the references are scored
    check_fpr(fpr)
    scores = score_images(
        predictor,
        references,
        aggregator,
        batch_size=batch_size,
        size=size,
        progress=progress,
        desc=f"OOD reference ({predictor.name})",
    )
    return ImageOODDetector.fit(
        scores,
        predictor,
        aggregator=aggregator,
        fpr=fpr,
        resize_to=size,
        reference_sizes=[image_size(path) for path in references],
    )


def output_files(
    name: str, kinds: Collection[str], *, labelled: bool, distrusted: bool
) -> dict[str, str]:
    """{kind: file under the output folder} that `write_outputs` writes for the image
    `name`: the `kinds` that apply ("accuracy" only when `labelled`, "distrust" only when
    `distrusted`), in the order of OUTPUT_KINDS."""
    applies = {"accuracy": labelled, "distrust": distrusted}
    return {
        kind: f"{kind}/{name}.png"
        for kind in OUTPUT_KINDS
        if kind in kinds and applies.get(kind, True)
    }


def write_outputs(
    out: Path,
    name: str,
    image: np.ndarray,
    pred: np.ndarray,
    uncertainty: np.ndarray,
    label: np.ndarray | None,
    *,
    palette: np.ndarray,
    title: str,
    vmax: float = UNCERTAINTY_VMAX,
    ignore_index: int = IGNORE_INDEX,
    kinds: Collection[str] = OUTPUT_KINDS,
    distrust: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the output pictures `kinds` of one image (module docstring; "accuracy" only
    with a label, "distrust" only with its bool [H, W] mask) -> {kind: file}, the
    `output_files`."""
    colours = colorize(pred, palette)
    accuracy = accuracy_map(pred, label, ignore_index) if label is not None else None
    # Made only when asked for: a folder of video frames often wants one or two kinds.
    makers: dict[str, Callable[[], np.ndarray]] = {
        "pred": lambda: pred.astype(np.uint8 if len(palette) <= 256 else np.uint16),
        "seg": lambda: colours,
        "overlay": lambda: overlay(image, colours),
        "uncertainty": lambda: heat_map(uncertainty, vmax),
        "uncertainty16": lambda: uncertainty_to_uint16(uncertainty),
    }
    if accuracy is not None:
        makers["accuracy"] = lambda: accuracy
    if distrust is not None:
        makers["distrust"] = lambda: np.where(distrust, DISTRUST_FLAGGED, 0).astype(np.uint8)
    files = output_files(name, kinds, labelled=label is not None, distrusted=distrust is not None)
    for kind, file in files.items():
        if kind in makers:
            text = {"uncertainty": f"value / {UINT16_MAX}"} if kind == "uncertainty16" else None
            _save_png(out / file, makers[kind](), text)
    if "panel" in files:
        panels = [("image", image)]
        if label is not None:
            panels.append(("label", colorize(label, palette)))
        panels.append(("prediction", colours))
        if accuracy is not None:
            panels.append(("accuracy (white = wrong)", accuracy))
        if distrust is not None:
            panels.append(("distrust (white = probably wrong)", makers["distrust"]()))
        draw_panel(out / files["panel"], title, panels, uncertainty, vmax)
    return files


def provenance(predictor: Predictor, batch_size: int) -> dict[str, object]:
    """What made a run's outputs: the weights' fingerprint (`Predictor.fingerprint`, the one
    an OOD detector records), the passes per image (ensemble members or MC-dropout
    samples), how it ran, the software and when (UTC)."""
    return {
        "weights": predictor.fingerprint(),
        "passes": predictor.passes,
        "device": str(predictor.device),
        "channels_last": predictor.channels_last,
        "batch_size": batch_size,
        "segdistill": __version__,
        "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def previous_outputs(out: Path) -> set[Path]:
    """The files that earlier runs wrote in `out`: the pictures and OOD figure listed in
    predict.json (the last finished run's) and in predict.unfinished.jsonl (the files that
    runs which failed or were stopped since then began to write, `unfinished_record`); an
    empty set without either. A run removes those it did not write again once it has
    written its own, so a re-run into the same folder leaves none of an earlier run's files
    beside the new ones, whether that run finished or not; a failed run removes nothing
    (the next one does), and files no run listed are never removed."""
    listed: set[Path] = set()
    summary = out / SUMMARY_FILE
    if summary.is_file():
        try:
            document = json.loads(summary.read_text())
            listed = {
                out / name for record in document["images"] for name in record["files"].values()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(
                f"{summary}: not a predict.json segdistill can read ({error!r}); move it away "
                "or choose another --out"
            ) from error
        listed.add(out / OOD_FIGURE)
    listed |= {out / name for name in _unfinished_files(out / UNFINISHED_FILE)}
    return {path for path in listed if _inside(path, out)}


def _unfinished_files(record: Path) -> list[str]:
    """The files (relative to the output folder) that `record`, a predict.unfinished.jsonl,
    lists; none without it. A last line without its newline is left out: a run stopped
    while writing it had not begun to write those files yet."""
    if not record.is_file():
        return []
    try:
        lines = record.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, ValueError) as error:
        raise DataError(f"{record}: cannot read it ({error!r}); move it away") from error
    names = []
    for number, line in enumerate(lines, 1):
        try:
            name = json.loads(line)
        except ValueError:
            name = None
        if not isinstance(name, str):
            raise DataError(
                f"{record}, line {number}: {line[:80]!r} is not a file name in JSON; move the "
                "record away (the files it lists stay then) or choose another --out"
            )
        names.append(name)
    return names


@contextmanager
def unfinished_record(
    out: Path, files: Iterable[Path]
) -> Iterator[Callable[[Iterable[str]], None]]:
    """Write `out`/predict.unfinished.jsonl listing `files` (paths under `out`: what earlier
    runs left, and what this run knows it will write) and yield `will_write(names)`, which
    adds files (relative to `out`) before they are written. The caller removes the record
    once predict.json lists what the run wrote; until then the next run finds there the
    files of a run that failed or was stopped (`previous_outputs`)."""
    record = out / UNFINISHED_FILE
    # Written whole first, atomically: it keeps the earlier runs' files and drops a last
    # line that a stopped run left half written, which the appends would otherwise extend.
    names = sorted(Path(os.path.relpath(path, out)).as_posix() for path in files)
    text = "".join(json.dumps(name) + "\n" for name in names)
    atomic_write_text(record, text)
    with open(record, "a", encoding="utf-8") as log:

        def will_write(new: Iterable[str]) -> None:
            log.write("".join(json.dumps(name) + "\n" for name in new))
            log.flush()
            # On disk before the files are: a crash must not leave a file it does not list.
            os.fsync(log.fileno())

        yield will_write


def check_output_kinds(kinds: Collection[str]) -> list[str]:
    """`kinds` in the order of OUTPUT_KINDS; ConfigError naming an unknown one."""
    unknown = sorted(set(kinds) - set(OUTPUT_KINDS))
    if unknown:
        raise ConfigError(
            f"unknown output kind(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(OUTPUT_KINDS)}"
        )
    return [kind for kind in OUTPUT_KINDS if kind in kinds]


def predict_files(
    predictor: Predictor,
    images: Sequence[InputImage | Path],
    out: Path,
    *,
    labels: Path | None = None,
    batch_size: int = 1,
    size: tuple[int, int] | None = None,
    vmax: float = UNCERTAINTY_VMAX,
    ignore_index: int = IGNORE_INDEX,
    classes: ClassesSpec | None = None,
    ood: ImageOODDetector | None = None,
    distrust_above: float | None = None,
    outputs: Collection[str] = OUTPUT_KINDS,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> PredictSummary:
    """Predict `images` (from `find_images`, or image files, each then named by its stem) in
    batches and write the `outputs` of the module docstring (default: every kind) and
    predict.json under `out`. With `ood` (a detector fitted for this predictor and `size`),
    each image is also flagged or not as unlike the detector's reference images. With
    `distrust_above` T, the pixels whose uncertainty is >= T are marked probably wrong (pick
    T from `segdistill evaluate`'s error_operating_points). `classes` (a folder data set's
    classes file, `load_classes`; default: the classes the weights were trained on,
    `predictor.classes`) give the colours that draw them and the mask values and ignore
    value that read the labels; without either, the Cityscapes colours and labels as class
    ids. Notices go to stderr as they happen and into the summary. DataError names the first
    image or label that cannot be used; with `skip_unreadable`, an image that cannot be read
    (a corrupt or truncated frame) is left out with a notice and listed as skipped instead.
    Once the outputs are written, the files of earlier runs (`previous_outputs`, finished or
    not) that this one did not write again are removed.
    """
    _check_batch_size(batch_size)
    images = as_input_images(images)
    check_output_names(images)
    names = dict(images)
    if not (math.isfinite(vmax) and vmax > 0):
        raise ConfigError(f"--vmax must be a finite number > 0, got {vmax}")
    kinds = check_output_kinds(outputs)
    if distrust_above is not None and not (math.isfinite(distrust_above) and distrust_above >= 0):
        raise ConfigError(f"--distrust-above must be a finite number >= 0, got {distrust_above}")
    if ood is not None:
        ood.check_model(predictor, size, where="the OOD detector")
    check_output_folder(out, "--out")
    label_files = match_labels(images, labels) if labels is not None else {}
    multiple = input_multiple(predictor.segmenters())
    palette = class_palette(predictor.num_classes)
    stored = None
    if classes is not None:
        check_class_count(classes, predictor, "the classes file")
    classes = classes or predictor.classes
    if classes is not None:
        palette, ignore_index = classes.colors, classes.ignore_index
        # Labels of class ids may be Cityscapes files instead, read by their own table.
        stored = None if classes.masks_hold_class_ids else classes.mapping
    title = f"{predictor.name} ({predictor.kind}; uncertainty: {predictor.uncertainty_source})"
    summary = PredictSummary()
    notify = _notifier(summary.notices, f"{SUMMARY_FILE} lists them all under notices")
    previous = previous_outputs(out)
    written: set[Path] = set()
    records = []
    ood_scores: list[float] = []
    other_sizes: set[tuple[int, ...]] = set()  # told once per size the OOD references lack
    # The OOD figure is listed from the start, as it is written after the last image.
    ood_file = {out / OOD_FIGURE} if ood is not None else set()
    with (
        unfinished_record(out, previous | ood_file) as will_write,
        tqdm(total=len(images), desc="predict", unit="image", disable=not progress) as bar,
    ):

        def skip(path: Path, error: DataError) -> None:
            notify(f"skipped: {error}")
            summary.skipped.append({"image": str(path.resolve()), "error": str(error)})
            bar.update(1)

        for batch in stop_on_ctrl_c(
            batches(
                [path for path, _ in images],
                batch_size,
                multiple,
                size,
                notify,
                skip if skip_unreadable else None,
            )
        ):
            results = predict_arrays(predictor, [image for _, image in batch], multiple, size)
            for (path, image), (pred, uncertainty, ood_map) in zip(batch, results):
                name = names[path]
                label_file = label_files.get(path)
                if labels is not None and label_file is None:
                    notify(f"{path}: no label found under {labels}; no accuracy map")
                label = (
                    read_label(
                        label_file, image.shape[:2], predictor.num_classes, ignore_index, stored
                    )
                    if label_file is not None
                    else None
                )
                scores = scores_of_map(ood_map)
                record: dict[str, object] = {
                    "name": name,
                    "image": str(path.resolve()),
                    "label": None if label_file is None else str(label_file.resolve()),
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "image_scores": scores,
                }
                panel_title = f"{name}: {title}"
                distrust = None if distrust_above is None else uncertainty >= distrust_above
                summary.pixels += uncertainty.size
                if distrust is not None:
                    record["distrust_share"] = float(distrust.mean())
                    summary.distrusted += int(distrust.sum())
                if ood is not None:
                    uncalibrated = ood.other_size(image.shape[:2])
                    if uncalibrated is not None:
                        record["ood_not_calibrated"] = uncalibrated
                        if image.shape[:2] not in other_sizes:
                            notify(f"{path}: {uncalibrated}")
                            other_sizes.add(image.shape[:2])
                    score = scores[ood.aggregator]
                    flagged = bool(ood.flags(score))
                    record |= {"ood_score": score, "ood": flagged}
                    ood_scores.append(score)
                    summary.flagged += flagged
                    verdict = "> {}: flagged as OOD" if flagged else "<= {}: not flagged"
                    against = verdict.format(f"threshold {ood.threshold:.4g}")
                    panel_title += f"\nOOD score ({ood.aggregator}) {score:.4g} {against}"
                will_write(
                    output_files(
                        name,
                        kinds,
                        labelled=label is not None,
                        distrusted=distrust is not None,
                    ).values()
                )
                record["files"] = files = write_outputs(
                    out,
                    name,
                    image,
                    pred,
                    uncertainty,
                    label,
                    palette=palette,
                    title=panel_title,
                    vmax=vmax,
                    ignore_index=ignore_index,
                    kinds=kinds,
                    distrust=distrust,
                )
                written |= {out / name for name in files.values()}
                records.append(record)
                summary.images += 1
                summary.labelled += label is not None
            bar.update(len(batch))
    if ood is not None:
        figure = figures.ood_flags(
            ood.reference_scores,
            ood_scores,
            ood.threshold,
            ood.aggregator,
            f"{predictor.name}: which images are unlike the reference images",
        )
        figures.save(figure, out / OOD_FIGURE)
        written.add(out / OOD_FIGURE)
    stale = sorted(path for path in previous - written if path.is_file())
    for path in stale:
        path.unlink()
        # A sub-folder that held only an earlier run's files goes with them.
        for folder in path.parents:
            if folder == out or any(folder.iterdir()):
                break
            folder.rmdir()
    if stale:
        notify(f"{out}: removed {len(stale)} files of earlier runs that this one did not write")
    summary.summary = out / SUMMARY_FILE
    document = {
        "source": str(predictor.source.resolve()),
        "name": predictor.name,
        "kind": predictor.kind,
        "uncertainty_source": predictor.uncertainty_source,
        "ood_source": predictor.ood_source,
        "num_classes": predictor.num_classes,
        "class_names": None if classes is None else list(classes.names),
        "resize_to": None if size is None else list(size),
        "pad_multiple": multiple,
        # Enough to tell later which model, passes and software made these files.
        "run": provenance(predictor, batch_size),
        "encodings": {
            "pred": "class ids (train ids for Cityscapes models)",
            "uncertainty16": f"uncertainty = value / {UINT16_MAX}",
            "uncertainty": {"colormap": UNCERTAINTY_COLORMAP, "min": 0.0, "max": vmax},
            "accuracy": {
                "wrong": ACCURACY_WRONG,
                "right": ACCURACY_RIGHT,
                "void": ACCURACY_VOID,
            },
            "image_scores": "per image and aggregator, its OOD map (ood_source) aggregated "
            "over the image (segdistill.metrics.ood.image_scores)",
            "distrust": {"probably wrong (uncertainty >= distrust_above)": DISTRUST_FLAGGED},
        },
        "distrust_above": distrust_above,
        "skipped": summary.skipped,
        "notices": summary.notices,
        "ood": None
        if ood is None
        else {
            **ood.summary(),
            "flagged": summary.flagged,
        },
        "images": records,
    }
    write_json(summary.summary, document)
    # predict.json lists this run's files now, and the earlier runs' are gone.
    (out / UNFINISHED_FILE).unlink(missing_ok=True)
    return summary
