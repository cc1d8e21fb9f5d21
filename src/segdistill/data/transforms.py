"""Joint transforms: one random draw moves the image, the label and every extra dense map.

A sample is the dict of the data set sample contract (docs/architecture.md):
`image` uint8 [H, W, 3], `label` uint8/int64 [H, W], `maps` {name: float32 [K, H, W]},
plus `name` and `index`, which the transforms pass through untouched. Transforms never
modify their input arrays (a wrapper may hand out cached maps); they return a new dict.

The training recipe is the one of DUDES (Landgraf et al. 2023, Sec. 4): random scaling by a
factor in [0.5, 2.0], a random crop, a random horizontal flip; colour jitter is an option.
The geometric and colour transforms work on the uint8 image, so `Normalize` comes last and
`to_tensors` turns its float32 result into tensors.

Randomness. Every random transform takes an optional `numpy.random.Generator`. `Compose`
(and a transform called on its own) without one draws a fresh generator from torch's global
generator (`worker_rng`). PyTorch seeds that generator in each DataLoader worker with
`base_seed + worker_id`, and `base_seed` comes from the main process's torch generator, so
after `torch.manual_seed(s)` (or Lightning's `seed_everything(s)`) every sample gets the same
augmentation in every run, and different workers never repeat each other's draws (the
classic bug of numpy's global state copied into forked workers cannot happen here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segdistill.data.labels import IGNORE_INDEX

Sample = dict[str, Any]

# ImageNet statistics of RGB images scaled to [0, 1], the normalisation of every encoder.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The mean colour as uint8: padding with it gives 0 after `Normalize`.
IMAGENET_MEAN_COLOR = tuple(round(255 * m) for m in IMAGENET_MEAN)


def worker_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's global generator (per DataLoader worker)."""
    seed = int(torch.randint(0, 2**62, ()).item())
    return np.random.default_rng(seed)


def _rng_or_new(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else worker_rng()


def _resize(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize a channel-first [C, H, W] array to [C, *size] with torch's interpolate.

    `mode` is "bilinear" (image, continuous maps) or "nearest-exact" (labels; it samples the
    same pixel centres as bilinear with align_corners=False, unlike plain "nearest", which is
    shifted by half a pixel). Integer inputs are computed in float32 and rounded back.
    """
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    align = False if mode == "bilinear" else None
    out = F.interpolate(x, size=size, mode=mode, align_corners=align)[0].numpy()
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(array.dtype)


class Compose:
    """Apply transforms in order, all drawing from one generator."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng_or_new(rng)
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Resize by a factor drawn uniformly from [min_scale, max_scale].

    The image and the maps are resized bilinearly, the label with nearest neighbour, all to
    the same size round(H * s) x round(W * s), so their pixel grids stay aligned.
    """

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        scale = _rng_or_new(rng).uniform(self.min_scale, self.max_scale)
        height, width = sample["label"].shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = _resize(sample["image"].transpose(2, 0, 1), size, "bilinear").transpose(1, 2, 0)
        label = _resize(sample["label"][None], size, "nearest-exact")[0]
        maps = {name: _resize(m, size, "bilinear") for name, m in sample["maps"].items()}
        return {**sample, "image": image, "label": label, "maps": maps}

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Cut a random `height` x `width` window.

    A sample smaller than the window is first padded at the bottom and right: the label with
    `ignore_index` (padding is never trained on), the maps with 0 and the image with
    `image_fill` (default the ImageNet mean colour, which `Normalize` maps to 0).
    """

    def __init__(
        self,
        height: int,
        width: int,
        ignore_index: int = IGNORE_INDEX,
        image_fill: Sequence[int] = IMAGENET_MEAN_COLOR,
    ) -> None:
        self.height = height
        self.width = width
        self.ignore_index = ignore_index
        self.image_fill = tuple(image_fill)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = _rng_or_new(rng)
        sample = self._pad(sample)
        height, width = sample["label"].shape
        top = int(rng.integers(0, height - self.height + 1))
        left = int(rng.integers(0, width - self.width + 1))
        rows = slice(top, top + self.height)
        cols = slice(left, left + self.width)
        return {
            **sample,
            "image": sample["image"][rows, cols].copy(),
            "label": sample["label"][rows, cols].copy(),
            "maps": {name: m[:, rows, cols].copy() for name, m in sample["maps"].items()},
        }

    def _pad(self, sample: Sample) -> Sample:
        """Pad at the bottom/right up to at least the crop size (no copy when big enough)."""
        height, width = sample["label"].shape
        pad_h = max(0, self.height - height)
        pad_w = max(0, self.width - width)
        if pad_h == 0 and pad_w == 0:
            return sample
        image = np.empty((height + pad_h, width + pad_w, 3), dtype=sample["image"].dtype)
        image[:] = np.asarray(self.image_fill, dtype=image.dtype)
        image[:height, :width] = sample["image"]
        label = np.pad(sample["label"], ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        maps = {
            name: np.pad(m, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0)
            for name, m in sample["maps"].items()
        }
        return {**sample, "image": image, "label": label, "maps": maps}

    def __repr__(self) -> str:
        return f"RandomCrop({self.height}, {self.width}, ignore_index={self.ignore_index})"


def _mirror(array: np.ndarray, axis: int) -> np.ndarray:
    """A contiguous copy of `array` reversed along `axis` (torch refuses negative strides)."""
    return np.ascontiguousarray(np.flip(array, axis))


class RandomHorizontalFlip:
    """Mirror left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if _rng_or_new(rng).random() >= self.p:
            return sample
        return {
            **sample,
            "image": _mirror(sample["image"], axis=1),
            "label": _mirror(sample["label"], axis=1),
            "maps": {name: _mirror(m, axis=2) for name, m in sample["maps"].items()},
        }

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _grayscale(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float RGB -> [H, W, 1] luma (ITU-R 601, as PIL's "L" conversion)."""
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]


def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """factor * image + (1 - factor) * other, kept in the uint8 range [0, 255]."""
    return np.clip(factor * image + (1.0 - factor) * other, 0.0, 255.0)


class ColorJitter:
    """Random brightness, contrast and saturation of the uint8 image (label and maps untouched).

    Each factor is drawn uniformly from [max(0, 1 - x), 1 + x] and applied in this fixed order
    as a blend (the definitions of PIL's ImageEnhance and torchvision): brightness blends with
    black, contrast with the image's mean grey, saturation with each pixel's own grey.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if sample["image"].dtype != np.uint8:
            raise ValueError("ColorJitter works on uint8 images: put it before Normalize")
        rng = _rng_or_new(rng)
        image = sample["image"].astype(np.float32)
        image = _blend(image, 0.0, self._factor(rng, self.brightness))
        image = _blend(image, float(_grayscale(image).mean()), self._factor(rng, self.contrast))
        image = _blend(image, _grayscale(image), self._factor(rng, self.saturation))
        return {**sample, "image": np.rint(image).astype(np.uint8)}

    @staticmethod
    def _factor(rng: np.random.Generator, strength: float) -> float:
        return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


class Normalize:
    """uint8 image [H, W, 3] -> float32 (image / 255 - mean) / std; the last numpy step."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if sample["image"].dtype != np.uint8:
            raise ValueError(f"Normalize expects a uint8 image, got {sample['image'].dtype}")
        image = (sample["image"].astype(np.float32) / 255.0 - self.mean) / self.std
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def to_tensors(sample: Sample) -> Sample:
    """Normalised numpy sample -> tensors: image float32 [3, H, W], label int64 [H, W],
    maps float32 [K, H, W]; `name`, `index` and any other keys pass through.
    """
    image = sample["image"]
    if image.dtype != np.float32:
        raise ValueError(
            f"to_tensors expects a normalised float32 image, got {image.dtype}: "
            "end the transform with Normalize()"
        )
    return {
        **sample,
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "label": torch.from_numpy(np.asarray(sample["label"], dtype=np.int64)),
        "maps": {
            name: torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
            for name, m in sample["maps"].items()
        },
    }


def unnormalize(
    image: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Normalised float image(s) [..., 3, H, W] -> uint8 numpy [..., H, W, 3] for figures."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    pixels = ((image.detach() * std_t + mean_t) * 255.0).round().clamp(0, 255)
    return pixels.to(torch.uint8).movedim(-3, -1).cpu().numpy()


def build_train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The DUDES training augmentation: scale, crop (H, W), flip, optional jitter, normalise.

    `color_jitter` is the strength of brightness, contrast and saturation alike; 0 turns it off.
    """
    height, width = crop_size
    steps: list[Callable[..., Sample]] = [
        RandomScale(*scale_range),
        RandomCrop(height, width, ignore_index=ignore_index),
    ]
    if hflip:
        steps.append(RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(ColorJitter(color_jitter, color_jitter, color_jitter))
    steps.append(Normalize())
    return Compose(steps)


def build_eval_transform() -> Compose:
    """Evaluation: no geometric change, only normalisation (full-resolution images)."""
    return Compose([Normalize()])
