"""Cached teacher targets: the teacher's per-pixel signals on every training image, computed
once, stored as float16 and memory-mapped, so output-level distillation trains without
running the teacher.

What is cached: the signals that only pixel-wise methods read (`MethodSet.pixel_needs`:
pred_std for DUDES, mean_probs and std for Holder, logits for KD, mean_probs for JA-KD,
mean_probs and variance for U-KD). Everything else a config needs (the feature taps of
self_attention, adaptation and cwd on features, the logits cwd reads) comes from the
teacher online in the same step, so a config may mix both kinds of methods.

How: the teacher runs on each *un-augmented* training image (normalised as for training,
one image at a time, float32, in eval mode); each signal is resized bilinearly
(antialiased) to `scale` times the image size and stored as float16.

Reading (`TeacherCacheDataset.load`): the maps of image i are read from the memory map,
upsampled back to the image size when scale < 1, and added to `sample["maps"]` together
with `teacher_valid`, a map of ones, before the data set's joint transform. The random
scale, crop and flip therefore move image, label and teacher maps together (bilinear for
the maps, so probabilities stay probabilities). Where the crop pads a small image, every
map is padded with 0: `teacher_valid` is 0 exactly on the padding, and the training step
passes it to the pixel-wise methods as a mask (`valid_mask`), so padded pixels, where no
teacher output exists, never count in a distillation term (their label is ignore, so the
cross-entropy skips them too).

Layout of a cache folder DIR:

    DIR/cache.json     written last: the key, the channels of each signal, the image sizes
    DIR/{signal}.f16   float16 [K, h, w] maps of every image, back to back in index order

The key: the teacher (kind, MC-dropout samples and a SHA-256 of every tensor of every
member), the signal names, the scale and the training images (resolved path, size in
bytes, modification time). `open_or_build` uses DIR only when its key matches, every file
has the size the image list implies and every value is finite; otherwise it prints why
and rebuilds it. A build writes into DIR.partial-PID and renames that folder to DIR once
complete, so an interrupted build never passes for a cache (the next build removes its
leftovers). Processes sharing a cache (DDP ranks, parallel runs) take turns on the lock
file DIR.lock: the first builds, the others find the cache complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from segdistill.checkpoints import atomic_write
from segdistill.data import SegmentationDataset
from segdistill.data.transforms import Normalize, Sample, to_tensors
from segdistill.errors import DataError, TrainingError
from segdistill.models.teachers import Teacher

CACHE_VERSION = 1
META_FILE = "cache.json"
MAP_SUFFIX = ".f16"
# The map of ones added to every cached sample; the crop pads it with 0.
VALID_MAP = "teacher_valid"
# A cache is a function of its key: MC-dropout sampling during a build uses this seed.
BUILD_SEED = 0
# Values per chunk when a cache file is scanned for non-finite values.
_SCAN_CHUNK = 1 << 24


@dataclass(frozen=True)
class CacheKey:
    """What a cache was built from; a cache is used only when all of it matches.

    teacher: the teacher kind (with its MC-dropout samples) and the SHA-256 of its weights;
    signals: sorted signal names; scale: stored size / image size; images: SHA-256 of the
    training images' resolved paths, sizes in bytes and modification times.
    """

    teacher: str
    signals: tuple[str, ...]
    scale: float
    images: str
    version: int = CACHE_VERSION

    def difference(self, stored: dict[str, Any]) -> str | None:
        """Why a cache built with the key `stored` (from cache.json) does not fit, or None."""
        reasons = {
            "version": "it was written by another segdistill cache version",
            "teacher": "the teacher (its kind or weights) differs",
            "signals": "it holds other signals",
            "scale": "its cache_scale differs",
            "images": "the training images differ (added, removed or modified)",
        }
        for field, value in asdict(self).items():
            found = stored.get(field)
            if (list(value) if isinstance(value, tuple) else value) != found:
                detail = f" (cache: {found}, needed: {list(value)})" if field == "signals" else ""
                return f"stale: {reasons[field]}{detail}"
        return None


def teacher_digest(teacher: torch.nn.Module) -> str:
    """SHA-256 of the teacher's state dict: every tensor's name, dtype, shape and bytes (all
    members of an ensemble, in order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def images_digest(dataset: SegmentationDataset) -> str:
    """SHA-256 of the data set's image files: resolved path, size and modification time."""
    digest = hashlib.sha256()
    for files in dataset.samples:
        stat = files.image.stat()
        digest.update(f"{files.image.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(
    teacher: Teacher,
    teacher_kind: str,
    signals: Collection[str],
    scale: float,
    dataset: SegmentationDataset,
) -> CacheKey:
    """The key of a cache of `signals` of `teacher` on `dataset`; teacher_kind names the
    kind and anything else that changes its outputs (e.g. "mc_dropout(samples=8)")."""
    return CacheKey(
        teacher=f"{teacher_kind}:{teacher_digest(teacher)}",
        signals=tuple(sorted(signals)),
        scale=float(scale),
        images=images_digest(dataset),
    )


def stored_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(h, w) of the stored maps of an image of `size` (H, W)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class TeacherCache:
    """A complete, checked cache, opened for reading.

    channels: {signal: K}; sizes: per image, (H, W) of the image and (h, w) stored. The
    float16 files are memory-mapped lazily, once per process (DataLoader workers included).
    """

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.channels: dict[str, int] = dict(meta["channels"])
        self.sizes: list[tuple[tuple[int, int], tuple[int, int]]] = [
            ((H, W), (h, w)) for H, W, h, w in meta["sizes"]
        ]
        # Pixel offset of every image in the files (times K for a K-channel signal).
        pixels = [h * w for _, (h, w) in self.sizes]
        self.offsets = np.concatenate([[0], np.cumsum(pixels)]).tolist()
        self._arrays: dict[str, np.memmap] | None = None

    @property
    def signals(self) -> frozenset[str]:
        return frozenset(self.channels)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker reopens the memory maps rather than receiving a copy.
        return {**self.__dict__, "_arrays": None}

    def _mapped(self) -> dict[str, np.memmap]:
        if self._arrays is None:
            self._arrays = {
                name: np.memmap(self.directory / f"{name}{MAP_SUFFIX}", np.float16, mode="r")
                for name in self.channels
            }
        return self._arrays

    def maps(self, index: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """{signal: float32 [K, H, W]} of image `index`, whose image is `size` (H, W)."""
        (height, width), (h, w) = self.sizes[index]
        if tuple(size) != (height, width):
            raise DataError(
                f"teacher cache {self.directory}: image {index} is {size[1]}x{size[0]} (WxH) "
                f"but was {width}x{height} when the cache was built; rerun to rebuild it"
            )
        start, arrays, maps = self.offsets[index], self._mapped(), {}
        for name, k in self.channels.items():
            values = arrays[name][k * start : k * (start + h * w)].reshape(k, h, w)
            values = values.astype(np.float32)
            if (h, w) != (height, width):
                x = torch.from_numpy(values)[None]
                values = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
                values = values.numpy()
            maps[name] = values
        return maps


class TeacherCacheDataset(Dataset):
    """A training set whose raw samples carry the cached teacher maps and `teacher_valid`
    in `sample["maps"]`, so the data set's joint transform moves them with the image."""

    def __init__(self, dataset: SegmentationDataset, cache: TeacherCache) -> None:
        if len(dataset) != len(cache):
            raise DataError(
                f"teacher cache {cache.directory} holds {len(cache)} images, the data set "
                f"{len(dataset)}"
            )
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Sample:
        """The data set's raw sample with the teacher maps added (float32 [K, H, W])."""
        sample = self.dataset.load(index)
        size = sample["image"].shape[:2]
        maps = {
            **sample["maps"],
            **self.cache.maps(index, size),
            VALID_MAP: np.ones((1, *size), dtype=np.float32),
        }
        return {**sample, "maps": maps}

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.dataset.transform(self.load(index)))


def valid_mask(maps: dict[str, Tensor]) -> Tensor | None:
    """bool [B, H, W]: pixels of a batch where the cached teacher maps exist (False on crop
    padding); None when the batch carries no cached maps."""
    if VALID_MAP not in maps:
        return None
    return maps[VALID_MAP][:, 0] > 0.5


def open_or_build(
    directory: str | Path,
    teacher: Teacher,
    key: CacheKey,
    dataset: SegmentationDataset,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TeacherCache:
    """The cache in `directory` for `key`, built (or rebuilt, saying why) unless a complete,
    matching and sound one is there. The teacher runs on `device` while building."""
    directory = Path(directory)
    what = f"{len(dataset)} images, {', '.join(key.signals)}"
    with _locked(directory):
        meta, problem = _inspect(directory, key)
        if meta is not None:
            if rank_zero_only.rank == 0:
                print(f"teacher cache {directory}: {what}")
            return TeacherCache(directory, meta)
        action = "building it" if problem == "absent" else f"{problem}; rebuilding it"
        print(f"teacher cache {directory}: {action} ({what})")
        meta = _build(directory, teacher, key, dataset, torch.device(device), progress)
        return TeacherCache(directory, meta)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on DIR.lock (next to DIR, which a build replaces)."""
    lock_path = directory.with_name(f"{directory.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _inspect(directory: Path, key: CacheKey) -> tuple[dict[str, Any] | None, str]:
    """(cache.json's contents, "") when the cache is complete, matches `key` and is sound;
    else (None, what is wrong)."""
    meta_path = directory / META_FILE
    if not directory.exists():
        return None, "absent"
    if not meta_path.is_file():
        return None, f"incomplete (no {META_FILE})"
    try:
        meta = json.loads(meta_path.read_text())
        stale = key.difference(meta["key"])
        channels, sizes = dict(meta["channels"]), [tuple(map(int, s)) for s in meta["sizes"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"corrupt: unreadable {META_FILE} ({error})"
    if stale is not None:
        return None, stale
    pixels = sum(h * w for _, _, h, w in sizes)
    for name, k in channels.items():
        path = directory / f"{name}{MAP_SUFFIX}"
        expected = 2 * k * pixels
        found = path.stat().st_size if path.is_file() else None
        if found != expected:
            return None, f"corrupt: {path.name} has {found} bytes, expected {expected}"
        if _has_nonfinite(path):
            return None, f"corrupt: {path.name} holds NaN or infinite values"
    return meta, ""


def _has_nonfinite(path: Path) -> bool:
    values = np.memmap(path, np.float16, mode="r")
    # float16 with all exponent bits set is inf or NaN; integer ops scan faster than isfinite.
    bits = values.view(np.uint16)
    return any(
        ((bits[start : start + _SCAN_CHUNK] & 0x7C00) == 0x7C00).any()
        for start in range(0, bits.size, _SCAN_CHUNK)
    )


def _clear_for_build(directory: Path) -> None:
    """Remove a previous build's leftovers; refuse to touch a folder that is not a cache."""
    for pattern in (f"{directory.name}.partial-*", f"{directory.name}.stale-*"):
        for leftover in directory.parent.glob(pattern):
            shutil.rmtree(leftover)
    if directory.exists():
        if not directory.is_dir():
            raise DataError(f"teacher cache {directory} is a file, not a folder")
        foreign = [
            p.name
            for p in directory.iterdir()
            if not (p.name == META_FILE or p.name.endswith(MAP_SUFFIX))
        ]
        if foreign:
            raise DataError(
                f"teacher cache {directory} holds files that are not a cache's "
                f"({', '.join(sorted(foreign)[:5])}); choose an empty or new folder"
            )


def _build(
    directory: Path,
    teacher: Teacher,
    key: CacheKey,
    dataset: SegmentationDataset,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Write the cache into DIR.partial-PID, rename it to `directory` when complete and
    return the contents of its cache.json."""
    _clear_for_build(directory)
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    teacher.to(device)
    normalize = Normalize()
    channels: dict[str, int] = {}
    sizes: list[list[int]] = []
    bar = tqdm(
        range(len(dataset)),
        desc=f"teacher cache {directory.name}",
        unit="image",
        disable=not progress,
    )
    cuda_devices = [device] if device.type == "cuda" else []
    # fork_rng: MC-dropout sampling must not move the training run's random streams.
    with contextlib.ExitStack() as files, torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(BUILD_SEED)
        outputs = {
            name: files.enter_context(open(partial / f"{name}{MAP_SUFFIX}", "wb"))
            for name in key.signals
        }
        for index in bar:
            sample = normalize(dataset.load(index))
            image = torch.from_numpy(sample["image"].transpose(2, 0, 1).copy())[None]
            signals = teacher.signals(image.to(device), set(key.signals))
            size = tuple(image.shape[-2:])
            h, w = stored_size(size, key.scale)
            for name, file in outputs.items():
                x = signals.require(name).float()
                if (h, w) != size:
                    x = F.interpolate(
                        x, size=(h, w), mode="bilinear", align_corners=False, antialias=True
                    )
                values = x[0].cpu().numpy().astype(np.float16)
                if not np.isfinite(values).all():
                    raise TrainingError(
                        f"the teacher's {name} on training image {sample['name']} is not "
                        "finite in float16 (NaN, or beyond +-65504); no cache was written"
                    )
                channels[name] = values.shape[0]
                file.write(values.tobytes())
            sizes.append([*size, h, w])
        for file in outputs.values():
            file.flush()
            os.fsync(file.fileno())
    meta = {"key": asdict(key), "channels": channels, "sizes": sizes}
    atomic_write(partial / META_FILE, lambda f: f.write(json.dumps(meta).encode()))
    if directory.exists():
        stale = directory.with_name(f"{directory.name}.stale-{os.getpid()}")
        directory.rename(stale)
        partial.rename(directory)
        shutil.rmtree(stale)
    else:
        partial.rename(directory)
    return meta
