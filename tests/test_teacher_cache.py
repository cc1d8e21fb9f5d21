"""Cached teacher targets (`segdistill.teacher_cache`) on a tiny SynthStreets set and a tiny
randomly initialised ensemble: equal to the online teacher, moved by the joint transforms
with the image, masked on crop padding, and rebuilt (never used) when stale, partial or
corrupt. `write_synthstreets` and `write_ensemble` are shared with test_distill.py."""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill import memory
from segdistill import teacher_cache as tc
from segdistill.checkpoints import build_model, save_weights
from segdistill.config import ModelConfig
from segdistill.data import synthstreets as ss
from segdistill.data.cityscapes import CityscapesDataset
from segdistill.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    to_tensors,
)
from segdistill.errors import DataError
from segdistill.losses import median_mask
from segdistill.methods import PIXEL_METHODS, build_methods
from segdistill.models.teachers import Ensemble, MCDropout
from segdistill.outputs import SegOutput, TeacherSignals

TINY_MODEL = ModelConfig(encoder_options={"output_stride": 16, "width": 0.125})
SIGNALS = ("logits", "mean_probs", "pred_std", "std", "variance")
SIZE = (32, 64)  # SynthStreets images, height x width


def write_synthstreets(root: Path, train: int = 4, val: int = 2) -> Path:
    """A SynthStreets data set of 32x64 images (no test split, no shifts)."""
    config = ss.SynthConfig(size=SIZE, train=train, val=val, test=0, shifts=())
    ss.generate(root, config, progress=False)
    return root


def write_ensemble(
    directory: Path, members: int = 2, model_config: ModelConfig = TINY_MODEL, seed: int = 0
) -> Path:
    """An ensemble directory (manifest.json + safetensors) of randomly initialised members."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(members):
        torch.manual_seed(seed + index)
        path = directory / f"member_{index:02d}.safetensors"
        save_weights(path, build_model(model_config, 19), model_config)
        entries.append({"checkpoint": path.name})
    (directory / "manifest.json").write_text(json.dumps({"members": entries}))
    return directory


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthstreets(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Ensemble:
    return Ensemble.from_manifest(write_ensemble(tmp_path_factory.mktemp("ensemble")))


def open_cache(
    directory: Path,
    teacher: Ensemble,
    dataset: CityscapesDataset,
    signals: tuple[str, ...] = SIGNALS,
    scale: float = 1.0,
) -> tc.TeacherCache:
    key = tc.cache_key(teacher, "ensemble", signals, scale, dataset)
    return tc.open_or_build(directory, teacher, key, dataset, progress=False)


def assert_fp16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float16 keeps 11 significant bits: relative error <= 2**-11 (and tiny subnormal steps).
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-6)


def test_cached_maps_equal_the_online_teacher_on_unaugmented_images(
    tmp_path: Path, synth: Path, teacher: Ensemble
) -> None:
    dataset = CityscapesDataset(synth, "train")  # normalisation only
    cache = open_cache(tmp_path / "cache", teacher, dataset)
    assert cache.signals == set(SIGNALS) and len(cache) == len(dataset)
    wrapped = tc.TeacherCacheDataset(dataset, cache)
    for index in range(len(dataset)):
        sample = wrapped[index]
        online = teacher.signals(sample["image"][None], set(SIGNALS))
        for name in SIGNALS:
            assert_fp16_close(sample["maps"][name], online.require(name)[0])
        assert torch.equal(sample["maps"][tc.VALID_MAP], torch.ones(1, *SIZE))
    assert (tmp_path / "cache" / "pred_std.f16").stat().st_size == 2 * len(dataset) * 32 * 64


def test_the_documented_cache_json_layout_is_what_a_build_writes(
    tmp_path: Path, synth: Path, teacher: Ensemble
) -> None:
    """docs/methods.md names the keys of cache.json in backticks: `key` {`name`: ...} and
    the others outside the braces; the file holds those, and `sizes` as documented."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    start = text.index("`cache.json` holds ")
    bullet = text[start + len("`cache.json` holds ") : text.index(". At start", start)]
    inner = re.search(r"`key` \{([^{}]*)\}", bullet)
    top = re.sub(r"\{[^{}]*\}|\([^()]*\)|\[[^\[\]]*\]", "", bullet)
    dataset = CityscapesDataset(synth, "train")
    open_cache(tmp_path / "cache", teacher, dataset, scale=0.5)
    meta = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert set(re.findall(r"`(\w+)`", top)) == set(meta)
    assert set(re.findall(r"`(\w+)`:", inner.group(1))) == set(meta["key"])
    assert meta["key"]["scale"] == 0.5 and sorted(meta["key"]["signals"]) == sorted(SIGNALS)
    assert set(meta["channels"]) == set(SIGNALS) and meta["channels"]["logits"] == 19
    assert meta["sizes"] == [[*SIZE, SIZE[0] // 2, SIZE[1] // 2]] * len(dataset)


def test_a_weak_mc_dropout_teachers_variance_keeps_its_median_mask(
    tmp_path: Path, synth: Path, teacher: Ensemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 1 % MC-dropout teacher's variance lies far below float16's normal range (6e-5),
    # where 6e-8 steps would leave a few levels and zeros to U-KD's median threshold.
    dataset = CityscapesDataset(synth, "train")
    real_signals = teacher.signals

    def weak_variance(images: torch.Tensor, needs: set[str]) -> TeacherSignals:
        signals = real_signals(images, needs)
        signals.variance = signals.variance * 1e-6
        return signals

    monkeypatch.setattr(teacher, "signals", weak_variance)
    cache = open_cache(tmp_path / "cache", teacher, dataset, ("mean_probs", "variance"))
    wrapped = tc.TeacherCacheDataset(dataset, cache)
    for index in range(len(dataset)):
        sample = wrapped[index]
        online = weak_variance(sample["image"][None], {"variance"}).variance
        assert online.median() < 1e-7
        torch.testing.assert_close(sample["maps"]["variance"][None], online, rtol=1e-6, atol=0)
        assert torch.equal(median_mask(sample["maps"]["variance"][None]), median_mask(online))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "cache.json",
        "mean_probs.f16",
        "variance.f32",
    ]


def test_joint_transforms_move_cached_maps_with_the_image_and_padding_is_invalid(
    tmp_path: Path, synth: Path, teacher: Ensemble
) -> None:
    # Half size, then a full-size crop (padded at the bottom and right), then a mirror.
    transform = Compose([RandomScale(0.5, 0.5), RandomCrop(*SIZE), RandomHorizontalFlip(1.0)])
    dataset = CityscapesDataset(synth, "train", Compose([*transform.transforms, Normalize()]))
    cache = open_cache(tmp_path / "cache", teacher, dataset, ("mean_probs", "pred_std"))
    wrapped = tc.TeacherCacheDataset(dataset, cache)
    padding = torch.ones(SIZE, dtype=torch.bool)
    padding[:16, 32:] = False  # the scaled image, mirrored to the right half
    for index in range(len(dataset)):
        sample = wrapped[index]
        raw = dataset.load(index)
        image = to_tensors(Normalize()(raw))["image"][None]
        online = teacher.signals(image, {"mean_probs", "pred_std"})
        maps = {
            "mean_probs": online.mean_probs[0].numpy(),
            "pred_std": online.pred_std[0].numpy(),
            tc.VALID_MAP: np.ones((1, *SIZE), np.float32),
        }
        expected = to_tensors(dataset.transform({**raw, "maps": maps}))
        assert torch.equal(sample["image"], expected["image"])
        assert torch.equal(sample["label"], expected["label"])
        for name in ("mean_probs", "pred_std"):
            assert_fp16_close(sample["maps"][name], expected["maps"][name])
        valid = tc.valid_mask({tc.VALID_MAP: sample["maps"][tc.VALID_MAP][None]})[0]
        assert torch.equal(~valid, padding)
        assert (sample["label"][padding] == 255).all()
        # Inside the image the probabilities still sum to 1 after bilinear resizing.
        total = sample["maps"]["mean_probs"].sum(0)
        torch.testing.assert_close(total[valid], torch.ones_like(total[valid]), atol=2e-3, rtol=0)


def test_a_reduced_cache_scale_stores_smaller_maps_and_reads_them_at_image_size(
    tmp_path: Path, synth: Path, teacher: Ensemble
) -> None:
    dataset = CityscapesDataset(synth, "train")
    cache = open_cache(tmp_path / "cache", teacher, dataset, ("mean_probs", "std"), scale=0.5)
    assert cache.sizes[0] == (SIZE, (16, 32))
    assert (tmp_path / "cache" / "std.f16").stat().st_size == 2 * len(dataset) * 19 * 16 * 32
    maps = tc.TeacherCacheDataset(dataset, cache)[0]["maps"]
    assert maps["mean_probs"].shape == (19, *SIZE)
    online = teacher.signals(dataset[0]["image"][None], {"mean_probs"}).mean_probs[0]
    assert (maps["mean_probs"] - online).abs().mean() < 0.1 * online.abs().mean()


def forbid_running(teacher: Ensemble, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any call of the teacher fail the test: a cache that fits must be used as is."""

    def fail(*args: object) -> None:
        raise AssertionError("the teacher ran although the cache fits")

    monkeypatch.setattr(teacher, "signals", fail)


def test_a_matching_cache_is_used_without_running_the_teacher(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dataset = CityscapesDataset(synth, "train")
    open_cache(tmp_path / "cache", teacher, dataset)
    assert "building it" in capsys.readouterr().out
    files = sorted((tmp_path / "cache").iterdir())
    stamps = [path.stat().st_mtime_ns for path in files]
    forbid_running(teacher, monkeypatch)
    open_cache(tmp_path / "cache", teacher, dataset)
    assert "rebuilding" not in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in files] == stamps


def _changed_signals(directory: Path, teacher: Ensemble, dataset: CityscapesDataset) -> None:
    open_cache(directory, teacher, dataset, ("pred_std",))


def _changed_scale(directory: Path, teacher: Ensemble, dataset: CityscapesDataset) -> None:
    open_cache(directory, teacher, dataset, scale=0.5)


def _changed_teacher(directory: Path, teacher: Ensemble, dataset: CityscapesDataset) -> None:
    other = Ensemble.from_manifest(write_ensemble(directory.parent / "other", seed=7))
    open_cache(directory, other, dataset)


def _changed_images(directory: Path, teacher: Ensemble, dataset: CityscapesDataset) -> None:
    first, second = dataset.samples[0].image, dataset.samples[1].image
    first.write_bytes(second.read_bytes())  # same size and format, other pixels
    open_cache(directory, teacher, dataset)


@pytest.mark.parametrize(
    "change, reason",
    [
        (_changed_signals, "stale: it holds other signals"),
        (_changed_scale, "stale: its cache_scale differs"),
        (_changed_teacher, "stale: the teacher (its kind or weights) differs"),
        (_changed_images, "stale: the training images differ"),
    ],
)
def test_a_stale_cache_is_rebuilt_with_the_reason(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    teacher: Ensemble,
    capsys: pytest.CaptureFixture[str],
    change,
    reason: str,
) -> None:
    synth = write_synthstreets(tmp_path_factory.mktemp("synth"), train=2, val=0)
    dataset = CityscapesDataset(synth, "train")
    open_cache(tmp_path / "cache", teacher, dataset)
    capsys.readouterr()
    change(tmp_path / "cache", teacher, dataset)
    out = capsys.readouterr().out
    assert reason in out and "rebuilding it" in out
    assert not list(tmp_path.glob("cache.stale-*"))


def test_a_regenerated_or_moved_data_set_keeps_its_cache(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The key holds the images' contents, not their paths or modification times: a copy
    of the data set elsewhere, every file newer, uses the cache built on the original."""
    open_cache(tmp_path / "cache", teacher, CityscapesDataset(synth, "train"))
    capsys.readouterr()
    copy = shutil.copytree(synth, tmp_path / "copy", copy_function=shutil.copy)
    for image in (copy / "leftImg8bit").rglob("*.png"):
        os.utime(image, ns=(0, image.stat().st_mtime_ns + 10**9))
    forbid_running(teacher, monkeypatch)
    open_cache(tmp_path / "cache", teacher, CityscapesDataset(copy, "train"))
    assert "rebuilding" not in capsys.readouterr().out


class Interrupted(Exception):
    pass


def test_an_interrupted_build_is_never_used_and_is_rebuilt(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dataset = CityscapesDataset(synth, "train")
    real_signals, calls = teacher.signals, []

    def crash_on_the_third_image(images: torch.Tensor, needs: set[str]) -> TeacherSignals:
        calls.append(None)
        if len(calls) == 3:
            raise Interrupted
        return real_signals(images, needs)

    monkeypatch.setattr(teacher, "signals", crash_on_the_third_image)
    with pytest.raises(Interrupted):
        open_cache(tmp_path / "cache", teacher, dataset)
    monkeypatch.undo()
    assert not (tmp_path / "cache").exists() and list(tmp_path.glob("cache.partial-*"))

    cache = open_cache(tmp_path / "cache", teacher, dataset)
    assert len(cache) == len(dataset) and not list(tmp_path.glob("cache.partial-*"))

    # A folder of map files without cache.json (e.g. cache.json deleted) is incomplete.
    (tmp_path / "cache" / tc.META_FILE).unlink()
    capsys.readouterr()
    open_cache(tmp_path / "cache", teacher, dataset)
    assert "incomplete (no cache.json); rebuilding it" in capsys.readouterr().out


DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture
def old_std(tmp_path: Path, synth: Path, teacher: Ensemble) -> bytes:
    """A finished std cache in tmp_path / "cache" (what a failed rebuild must keep); its
    std.f16 bytes."""
    open_cache(tmp_path / "cache", teacher, CityscapesDataset(synth, "train"), signals=("std",))
    return (tmp_path / "cache" / "std.f16").read_bytes()


def test_a_build_the_disk_cannot_hold_stops_first_and_keeps_the_old_cache(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    old_std: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = CityscapesDataset(synth, "train")
    # pred_std: one float16 map of 32x64 per image.
    needed = len(dataset) * 2 * SIZE[0] * SIZE[1]
    real_signals, calls = teacher.signals, []
    monkeypatch.setattr(teacher, "signals", lambda *args: calls.append(1) or real_signals(*args))

    monkeypatch.setattr(tc.shutil, "disk_usage", lambda path: DiskUsage(0, 0, needed - 1))
    with pytest.raises(DataError, match=r"cache needs about 0\.02 MiB .* 0\.02 MiB free"):
        open_cache(tmp_path / "cache", teacher, dataset, signals=("pred_std",))
    assert len(calls) == 1  # stopped after the first image, before writing anything
    assert not list(tmp_path.glob("cache.partial-*"))
    assert (tmp_path / "cache" / "std.f16").read_bytes() == old_std

    # Exactly enough room: the estimate is the cache's size, and the build goes through.
    monkeypatch.setattr(tc.shutil, "disk_usage", lambda path: DiskUsage(0, 0, needed))
    cache = open_cache(tmp_path / "cache", teacher, dataset, signals=("pred_std",))
    assert cache.signals == {"pred_std"}
    assert (tmp_path / "cache" / "pred_std.f16").stat().st_size == needed


class _FillsUp:
    """A file that raises ENOSPC once more than `room` bytes were written to it."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> _FillsUp:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_disk_that_fills_up_during_a_build_says_so_and_keeps_the_old_cache(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    old_std: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = CityscapesDataset(synth, "train")
    image_bytes = 2 * SIZE[0] * SIZE[1]

    def room_for_two_images(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        map_file = str(path).endswith(tuple(tc.MAP_SUFFIXES.values()))
        return _FillsUp(file, 2 * image_bytes) if map_file else file

    monkeypatch.setattr(tc, "open", room_for_two_images, raising=False)
    with pytest.raises(DataError, match="the disk filled up after .*, 2 of 4 images"):
        open_cache(tmp_path / "cache", teacher, dataset, signals=("pred_std",))
    assert not list(tmp_path.glob("cache.partial-*"))
    assert (tmp_path / "cache" / "std.f16").read_bytes() == old_std


def _truncate(directory: Path) -> None:
    path = directory / "pred_std.f16"
    path.write_bytes(path.read_bytes()[:-2])


def _write_nan(directory: Path) -> None:
    values = np.memmap(directory / "std.f16", np.float16, mode="r+")
    values[100] = np.nan
    values.flush()


def _write_inf_variance(directory: Path) -> None:
    values = np.memmap(directory / "variance.f32", np.float32, mode="r+")
    values[7] = np.inf
    values.flush()


def _garble_meta(directory: Path) -> None:
    (directory / tc.META_FILE).write_text("{not json")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "corrupt: pred_std.f16 has"),
        (_write_nan, "corrupt: std.f16 holds NaN or infinite values"),
        (_write_inf_variance, "corrupt: variance.f32 holds NaN or infinite values"),
        (_garble_meta, "corrupt: unreadable cache.json"),
    ],
)
def test_a_corrupt_cache_is_rebuilt_with_the_reason(
    tmp_path: Path,
    synth: Path,
    teacher: Ensemble,
    capsys: pytest.CaptureFixture[str],
    damage,
    reason: str,
) -> None:
    dataset = CityscapesDataset(synth, "train")
    open_cache(tmp_path / "cache", teacher, dataset)
    damage(tmp_path / "cache")
    capsys.readouterr()
    cache = open_cache(tmp_path / "cache", teacher, dataset)
    out = capsys.readouterr().out
    assert reason in out and "rebuilding it" in out
    maps = tc.TeacherCacheDataset(dataset, cache)[0]["maps"]
    online = teacher.signals(dataset[0]["image"][None], {"std", "pred_std"})
    assert_fp16_close(maps["std"], online.std[0])
    assert_fp16_close(maps["pred_std"], online.pred_std[0])


def test_a_folder_that_is_not_a_cache_is_never_deleted(
    tmp_path: Path, synth: Path, teacher: Ensemble
) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a cache's \\(notes.txt\\)"):
        open_cache(tmp_path / "cache", teacher, CityscapesDataset(synth, "train"))
    assert (tmp_path / "cache" / "notes.txt").read_text() == "mine"


# Every pixel-wise method (the ones a cache serves), with the uncertainty head it needs.
TEACHER_VALID_SPECS = [
    ({"name": "kd"}, None),
    ({"name": "holder"}, 19),
    ({"name": "dudes"}, 1),
    ({"name": "ja_kd"}, None),
    ({"name": "ukd"}, None),
    ({"name": "ukd", "options": {"median_over": "batch"}}, None),
]


def test_every_pixel_method_is_checked_for_teacher_valid() -> None:
    """A pixel-wise method added to METHODS must be added to TEACHER_VALID_SPECS."""
    assert {spec["name"] for spec, _ in TEACHER_VALID_SPECS} == set(PIXEL_METHODS)


@pytest.mark.parametrize("spec, uncertainty", TEACHER_VALID_SPECS, ids=lambda value: str(value))
def test_pixels_outside_teacher_valid_never_count(spec: dict, uncertainty: int | None) -> None:
    methods = build_methods([spec], 19)
    assert methods.pixel_needs == methods.needs
    student = SegOutput(
        logits=torch.randn(2, 19, 8, 12),
        uncertainty=None if uncertainty is None else torch.rand(2, uncertainty, 8, 12),
    )
    probs = torch.softmax(torch.randn(2, 19, 8, 12), dim=1)
    signals = TeacherSignals(
        mean_probs=probs,
        std=torch.rand(2, 19, 8, 12) * 0.2,
        pred_std=torch.rand(2, 1, 8, 12) * 0.2,
        variance=torch.rand(2, 1, 8, 12),
        logits=probs.log(),
    )
    target = torch.randint(0, 19, (2, 8, 12))
    valid = torch.ones(2, 8, 12, dtype=torch.bool)
    valid[0, 5:] = False  # crop padding: cached maps are 0 there
    valid[1, :, 9:] = False
    target[~valid] = 255

    def padded(fill: float) -> TeacherSignals:
        return TeacherSignals(
            **{
                name: value.masked_fill(~valid[:, None], fill)
                for name, value in vars(signals).items()
                if value is not None and name != "features"
            }
        )

    zero_padded = methods(student, padded(0.0), target, valid)
    other_padded = methods(student, padded(0.7), target, valid)
    assert all(torch.isfinite(value) for value in zero_padded.values())
    for name, value in zero_padded.items():
        torch.testing.assert_close(value, other_padded[name])
    # The result is that of the valid pixels alone: crop image 1 to its valid columns.
    if spec["name"] == "ukd" and "options" not in spec:
        cropped = methods(
            SegOutput(student.logits[1:, :, :, :9]),
            TeacherSignals(mean_probs=probs[1:, :, :, :9], variance=signals.variance[1:, :, :, :9]),
            target[1:, :, :9],
        )
        alone = methods(
            SegOutput(student.logits[1:]),
            TeacherSignals(mean_probs=probs[1:], variance=padded(0.0).variance[1:]),
            target[1:],
            valid[1:],
        )
        torch.testing.assert_close(alone["ukd/out"], cropped["ukd/out"])


def test_only_signals_read_by_pixel_wise_methods_are_cacheable() -> None:
    mixed = build_methods(
        [{"name": "dudes"}, {"name": "kd"}, {"name": "self_attention"}],
        19,
        student_channels={"encoder_out": 8},
        teacher_channels={"encoder_out": 8},
    )
    # self_attention reads the logits too (its CWD term): they must come from the teacher.
    assert mixed.pixel_needs == {"pred_std"}
    assert build_methods([{"name": "cwd"}], 19).pixel_needs == frozenset()


def _rss_file_mib() -> float:
    return memory._status_mib("RssFile")["RssFile"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_and_checking_a_cache_leaves_it_out_of_the_resident_set(tmp_path: Path) -> None:
    """A 128 MiB cache read image by image, and scanned for non-finite values, adds almost
    nothing to the process's resident memory: a memory map would add the 128 MiB of every
    page read (to RSS limits a pass over a paper-scale cache looks like tens of GB)."""
    images, height, width = 16, 1024, 2048  # 1 channel: 4 MiB per image
    (tmp_path / "pred_std.f16").write_bytes(bytes(2 * images * height * width))
    meta = {"channels": {"pred_std": 1}, "sizes": [[height, width, height, width]] * images}
    cache = tc.TeacherCache(tmp_path, meta)
    before = _rss_file_mib()
    with memory.StepPeak(interval=0.001) as step:
        start = memory.lifetime_peak_mib()
        for index in range(images):
            maps = cache.maps(index, (height, width))
            assert maps["pred_std"].shape == (1, height, width) and not maps["pred_std"].any()
        assert not tc._has_nonfinite(tmp_path / "pred_std.f16", np.dtype(np.float16))
    assert _rss_file_mib() - before < 16
    # The peak holds one image's maps and the scan's buffer, not the file.
    assert step.usage()["peak_rss_mib"] - max(start, before) < 64


def test_a_cache_file_cut_short_after_its_check_says_so(tmp_path: Path) -> None:
    (tmp_path / "pred_std.f16").write_bytes(bytes(2 * 3 * 4 * 4))  # 3 of 4 images
    meta = {"channels": {"pred_std": 1}, "sizes": [[4, 4, 4, 4]] * 4}
    cache = tc.TeacherCache(tmp_path, meta)
    assert cache.maps(2, (4, 4))["pred_std"].shape == (1, 4, 4)
    with pytest.raises(DataError, match=r"pred_std\.f16: image 3 ends past the end"):
        cache.maps(3, (4, 4))


def test_maps_stored_at_a_lower_scale_are_upsampled_bilinearly(tmp_path: Path) -> None:
    """Maps stored at half size come back at the image size by bilinear interpolation
    (pixel centres, align_corners false), which reproduces a linear ramp exactly; the
    second image's maps start after the first's two channels."""
    first = np.arange(2 * 2 * 2, dtype=np.float16).reshape(2, 2, 2)  # K = 2: 4 * k + 2 * y + x
    second = np.full((2, 1, 3), 5.0, dtype=np.float16)
    (tmp_path / "std.f16").write_bytes(first.tobytes() + second.tobytes())
    meta = {"channels": {"std": 2}, "sizes": [[4, 4, 2, 2], [2, 6, 1, 3]]}
    cache = tc.TeacherCache(tmp_path, meta)
    coords = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0.0, 1.0)  # source position of each pixel
    ramp = 2 * coords[:, None] + coords[None, :]
    got = cache.maps(0, (4, 4))["std"]
    np.testing.assert_allclose(got, np.stack([ramp, 4 + ramp]), atol=1e-6)
    np.testing.assert_array_equal(cache.maps(1, (2, 6))["std"], np.full((2, 2, 6), 5.0))


def test_the_key_covers_every_member_and_every_buffer(synth: Path, teacher: Ensemble) -> None:
    """A teacher that differs only in a batch-norm running statistic, or only in its second
    member, is another teacher: its cache must not be reused."""
    dataset = CityscapesDataset(synth, "train")
    base = tc.cache_key(teacher, "ensemble", SIGNALS, 1.0, dataset)
    stored = json.loads(json.dumps(dataclasses.asdict(base)))  # as cache.json holds it
    assert base.difference(stored) is None

    buffers = copy.deepcopy(teacher)
    name = next(n for n, _ in buffers.named_buffers() if n.endswith("running_var"))
    buffers.get_buffer(name).mul_(2.0)
    second = copy.deepcopy(teacher)
    with torch.no_grad():
        next(second.members[1].parameters()).add_(1.0)
    # The unbiased std (Python API) changes the std maps, not the weights.
    unbiased = Ensemble(list(teacher.members), unbiased_std=True)
    for changed in (buffers, second, unbiased):
        key = tc.cache_key(changed, "ensemble", SIGNALS, 1.0, dataset)
        assert key.difference(stored) == "stale: the teacher (its kind or weights) differs"
    assert base.teacher == f"ensemble:{tc.teacher_digest(teacher)}"  # earlier keys stay valid


def test_the_same_images_in_another_order_make_the_cache_stale(
    synth: Path, teacher: Ensemble
) -> None:
    """The cache holds image i's maps at position i: reordered, the same images would read
    one another's maps, so their key differs."""
    dataset = CityscapesDataset(synth, "train")
    stored = dataclasses.asdict(tc.cache_key(teacher, "ensemble", SIGNALS, 1.0, dataset))
    reordered = copy.copy(dataset)
    reordered.samples = [dataset.samples[1], dataset.samples[0], *dataset.samples[2:]]
    key = tc.cache_key(teacher, "ensemble", SIGNALS, 1.0, reordered)
    assert key.difference(json.loads(json.dumps(stored))) == (
        "stale: the training images differ (added, removed or modified)"
    )


def test_the_key_does_not_depend_on_the_order_of_the_signals(
    synth: Path, teacher: Ensemble
) -> None:
    # Signals come as a set (MethodSet.pixel_needs): their iteration order changes with
    # PYTHONHASHSEED, from one process to the next.
    dataset = CityscapesDataset(synth, "train")
    one = tc.cache_key(teacher, "ensemble", ["std", "mean_probs", "logits"], 1.0, dataset)
    other = tc.cache_key(teacher, "ensemble", ["logits", "mean_probs", "std"], 1.0, dataset)
    assert one.difference(json.loads(json.dumps(dataclasses.asdict(other)))) is None
    assert one.signals == ("logits", "mean_probs", "std")


def test_a_cache_of_another_version_is_rebuilt(
    tmp_path: Path, synth: Path, teacher: Ensemble, capsys: pytest.CaptureFixture[str]
) -> None:
    # E.g. version 2 stored the variance as float16.
    dataset = CityscapesDataset(synth, "train")
    open_cache(tmp_path / "cache", teacher, dataset, ("pred_std",))
    meta_path = tmp_path / "cache" / tc.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["key"]["version"] = tc.CACHE_VERSION - 1
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    open_cache(tmp_path / "cache", teacher, dataset, ("pred_std",))
    out = capsys.readouterr().out
    assert "stale: it was written by another segdistill cache version; rebuilding it" in out


def test_maps_are_stored_antialiased_bilinear_at_pixel_centres(
    tmp_path: Path, synth: Path, teacher: Ensemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At scale 0.5 a unit impulse at (16, 32) spreads, per axis, over the two stored pixels
    whose 4-pixel triangle filter covers it: weight 3/8 at the stored pixel it falls in
    (16 // 2, 32 // 2), 1/8 at the one before (centres 2 i + 0.5 in the image)."""
    dataset = CityscapesDataset(synth, "train")
    impulse = torch.zeros(1, 1, *SIZE)
    impulse[0, 0, 16, 32] = 1.0
    monkeypatch.setattr(teacher, "signals", lambda images, needs: TeacherSignals(pred_std=impulse))
    open_cache(tmp_path / "cache", teacher, dataset, ("pred_std",), scale=0.5)
    stored = np.fromfile(tmp_path / "cache" / "pred_std.f16", np.float16)[: 16 * 32]
    expected = np.zeros((16, 32))
    expected[7:9, 15:17] = np.outer([1 / 8, 3 / 8], [1 / 8, 3 / 8])
    np.testing.assert_allclose(stored.reshape(16, 32).astype(np.float64), expected, atol=1e-4)


def test_reading_an_image_of_another_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pred_std.f16").write_bytes(bytes(2 * 4 * 4))
    cache = tc.TeacherCache(tmp_path, {"channels": {"pred_std": 1}, "sizes": [[4, 4, 4, 4]]})
    with pytest.raises(DataError, match=r"image 0 is 5x4 \(WxH\) but was 4x4"):
        cache.maps(0, (4, 5))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_scan_finds_every_non_finite_value(tmp_path: Path, dtype: type) -> None:
    finfo = np.finfo(dtype)
    finite = np.array([0.0, -0.0, finfo.max, -finfo.max, finfo.tiny, finfo.smallest_subnormal])
    path = tmp_path / "map"
    for bad in (None, np.inf, -np.inf, np.nan):
        values = finite if bad is None else np.append(finite, bad)
        path.write_bytes(values.astype(dtype).tobytes())
        assert tc._has_nonfinite(path, np.dtype(dtype)) == (not np.isfinite(values).all()), bad


def test_an_mc_dropout_cache_is_a_function_of_its_key_and_leaves_the_rng_alone(
    tmp_path: Path, synth: Path
) -> None:
    """The build seeds MC-dropout sampling itself (BUILD_SEED): two builds from different
    global RNG states write the same bytes, and neither moves the global RNG."""
    config = ModelConfig(encoder_options={"output_stride": 16, "width": 0.125}, mc_dropout=0.5)
    torch.manual_seed(0)
    mc = MCDropout(build_model(config, 19), samples=3)
    dataset = CityscapesDataset(synth, "train")
    key = tc.cache_key(mc, "mc_dropout(samples=3)", ("std",), 1.0, dataset)
    files = []
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        state = torch.random.get_rng_state()
        tc.open_or_build(tmp_path / name, mc, key, dataset, progress=False)
        assert torch.equal(torch.random.get_rng_state(), state)
        files.append((tmp_path / name / "std.f16").read_bytes())
    assert files[0] == files[1]
    assert np.frombuffer(files[0], np.float16).max() > 0  # the samples did differ


def test_a_second_process_waits_for_the_build_and_then_uses_it(
    tmp_path: Path, synth: Path, teacher: Ensemble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDP ranks and parallel runs share one cache: while one holds DIR.lock (building),
    another neither builds nor reads; once it is released, it finds the cache and uses it."""
    import threading

    from segdistill.output_paths import waiting_lock

    dataset = CityscapesDataset(synth, "train")
    directory = tmp_path / "cache"
    result: list[tc.TeacherCache] = []
    with waiting_lock(tmp_path / "cache.lock"):  # as a first process building it
        other = threading.Thread(
            target=lambda: result.append(open_cache(directory, teacher, dataset))
        )
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and not directory.exists()
        key = tc.cache_key(teacher, "ensemble", SIGNALS, 1.0, dataset)
        tc._build(directory, teacher, key, dataset, torch.device("cpu"), progress=False)
    forbid_running(teacher, monkeypatch)
    other.join()
    assert len(result) == 1 and result[0].signals == frozenset(SIGNALS)
