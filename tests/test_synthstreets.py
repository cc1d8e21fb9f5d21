"""SynthStreets: determinism, class coverage, Cityscapes file conventions (checked with the
official label table and evaluation script), the shift models and the anomaly masks."""

from __future__ import annotations

import filecmp
import re
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image
from scipy.ndimage import binary_dilation

from segdistill.data import shifts
from segdistill.data import synthstreets as ss
from segdistill.data.labels import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, VOID_LABEL_IDS
from segdistill.data.synthstreets import (
    buildings,
    constants,
    files,
    furniture,
    layout,
    people,
    vehicles,
)
from segdistill.data.synthstreets.render import _ground_labels
from segdistill.errors import DataError

SIZE = (64, 128)
TINY = ss.SynthConfig(size=SIZE, train=2, val=1, test=3, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data set with every shift, generated once for the module."""
    root = tmp_path_factory.mktemp("synth")
    assert ss.generate(root, TINY, workers=1, progress=False)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _test_paths(root: Path) -> list[ss.SamplePaths]:
    return [
        ss.SamplePaths.of(root, "test", *ss.image_name("test", index)) for index in range(TINY.test)
    ]


def test_generation_is_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    config = ss.SynthConfig(size=SIZE, train=2, val=1, test=2, seed=5)
    ss.generate(tmp_path / "one", config, workers=1, progress=False)
    ss.generate(tmp_path / "two", config, workers=2, progress=False)
    first, second = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)

    other = ss.SynthConfig(size=SIZE, train=2, val=1, test=2, seed=6)
    ss.generate(tmp_path / "other", other, workers=1, progress=False)
    changed = _files(tmp_path / "other")
    images = [name for name in first if name.endswith("_leftImg8bit.png")]
    assert all(first[name] != changed[name] for name in images)


def test_all_classes_occur_in_a_small_set() -> None:
    seen = np.zeros(256, dtype=bool)
    for index in range(40):
        scene = ss.sample_scene(ss.image_rng(0, "train", index))
        seen[LABEL_ID_TO_TRAIN_ID[ss.render(scene, *SIZE).label_ids]] = True
    assert seen[:NUM_CLASSES].all(), np.flatnonzero(~seen[:NUM_CLASSES])


def test_layout_and_meta(dataset: Path) -> None:
    meta = ss.read_meta(dataset)
    assert meta["params"] == TINY.params()
    assert meta["splits"]["train"]["images"] == 2
    expected_shifts = {"fog_0.005", "fog_0.01", "fog_0.02", "rain", "night", "newcity", "anomaly"}
    assert set(meta["shifts"]) == expected_shifts
    cities = [set(meta["splits"][split]["cities"]) for split in ss.SPLITS]
    assert not (cities[0] & cities[1] or cities[0] & cities[2] or cities[1] & cities[2])
    frequencies = meta["class_frequencies"]["train"]
    assert sum(frequencies.values()) == pytest.approx(1.0, abs=1e-4)
    image = dataset / "leftImg8bit/train/ashford/ashford_000000_000019_leftImg8bit.png"
    assert Image.open(image).size == (SIZE[1], SIZE[0])
    assert not (dataset / ss.PARTIAL_FILE).exists()


def test_the_documented_meta_layout_is_what_synth_writes(dataset: Path) -> None:
    """docs/synthstreets.md lists the keys of meta.json in backticks: those outside the
    parentheses are its top level, those in the parentheses of `splits` and `shifts` the
    keys of each split's and each shifted copy's record."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "synthstreets.md").read_text()
    start = text.index("`meta.json` holds ")
    paragraph = text[start + len("`meta.json` holds ") : text.index("\n\n", start)]
    inner = dict(re.findall(r"`(\w+)` \(([^()]*)\)", paragraph))
    top = re.sub(r"\([^()]*\)", "", paragraph)
    meta = ss.read_meta(dataset)
    assert set(re.findall(r"`(\w+)`", top)) - {"void"} == set(meta)
    for name in ("splits", "shifts"):
        documented = set(re.findall(r"`(\w+)`", inner[name]))
        assert documented and all(set(record) == documented for record in meta[name].values())
    splits = [*meta["splits"], *meta["shifts"]]
    for name in ("class_pixels", "class_frequencies", "class_images"):
        assert list(meta[name]) == splits  # per split and shifted copy
        assert all(set(counts) == {*CLASS_NAMES, "void"} for counts in meta[name].values())


def test_label_files_follow_the_official_table(dataset: Path) -> None:
    for paths in _test_paths(dataset):
        label_ids = np.asarray(Image.open(paths.label_ids))
        assert label_ids.dtype == np.uint8
        assert set(np.unique(label_ids).tolist()) <= set(id2label)
        train_ids = np.asarray(Image.open(paths.train_ids))
        np.testing.assert_array_equal(train_ids, LABEL_ID_TO_TRAIN_ID[label_ids])
        instances = np.asarray(Image.open(paths.instance_ids))
        assert instances.dtype == np.uint16
        things = instances >= 1000
        np.testing.assert_array_equal(instances[things] // 1000, label_ids[things])
        np.testing.assert_array_equal(instances[~things], label_ids[~things])
        assert all(id2label[int(i) // 1000].hasInstances for i in np.unique(instances[things]))
        depth = ss.read_depth(paths.depth)
        assert np.isinf(depth[label_ids == constants.SKY]).all()
        assert (depth[label_ids != constants.SKY] > 0).all()
    ss.check_dataset(dataset)  # every split and shift passes the integrity check


def test_official_evaluation_scores_ground_truth_as_perfect(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cityscapesscripts 2.3 calls np.in1d, which numpy 2.4 removed; np.isin is its successor.
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    results = tmp_path / "results"
    results.mkdir()
    ground_truth = sorted((dataset / "gtFine" / "test").glob("*/*_gtFine_labelIds.png"))
    for path in ground_truth:  # predictions: the labels themselves, named as the script wants
        stem = path.name.removesuffix("_gtFine_labelIds.png")
        (results / f"{stem}_pred.png").write_bytes(path.read_bytes())
    args = cs_eval.args
    monkeypatch.setattr(args, "predictionPath", str(results))
    monkeypatch.setattr(args, "predictionWalk", None)
    monkeypatch.setattr(args, "JSONOutput", False)
    monkeypatch.setattr(args, "quiet", True)
    monkeypatch.setattr(args, "evalPixelAccuracy", True)
    monkeypatch.setattr(args, "evalInstLevelScore", True)
    monkeypatch.setattr(args, "exportFile", str(tmp_path / "result.json"))
    predictions = [cs_eval.getPrediction(args, str(path)) for path in ground_truth]
    scores = cs_eval.evaluateImgLists(predictions, [str(p) for p in ground_truth], args)
    assert scores["averageScoreClasses"] == pytest.approx(1.0)
    assert scores["averageScoreInstClasses"] == pytest.approx(1.0)

    for path in results.iterdir():  # a constant "road" prediction must score far lower
        road = np.full(SIZE, constants.ROAD, dtype=np.uint8)
        Image.fromarray(road).save(path)
    monkeypatch.setattr(args, "predictionWalk", None)
    scores = cs_eval.evaluateImgLists(predictions, [str(p) for p in ground_truth], args)
    assert scores["averageScoreClasses"] < 0.2


def test_fog_matches_the_koschmieder_formula(dataset: Path) -> None:
    for paths in _test_paths(dataset):
        clean = np.asarray(Image.open(paths.image)).astype(np.float64) / 255
        stored = np.asarray(Image.open(paths.depth)).astype(np.float64)
        distance = np.where(stored == 0, np.inf, stored / 100.0)
        for beta in shifts.FOG_BETAS:
            t = np.exp(-beta * distance)[..., None]
            expected = np.rint(255 * (clean * t + shifts.FOG_AIRLIGHT * (1 - t)))
            fog_root = ss.shift_root(dataset, f"fog_{beta}")
            foggy = ss.SamplePaths.of(fog_root, "test", paths.image.parent.name, _stem(paths))
            actual = np.asarray(Image.open(foggy.image)).astype(np.float64)
            assert np.abs(actual - expected).max() <= 1  # float32 vs float64 rounding


def _stem(paths: ss.SamplePaths) -> str:
    return paths.image.name.removesuffix("_leftImg8bit.png")


def test_fog_function_on_known_values() -> None:
    image = np.full((1, 3, 3), 100, dtype=np.uint8)
    depth = np.array([[0.0, 50.0, np.inf]], dtype=np.float32)
    out = shifts.fog(image, depth, beta=0.02, airlight=0.8)
    expected = [100, round(255 * (100 / 255 * np.exp(-1) + 0.8 * (1 - np.exp(-1)))), 204]
    assert out[0, :, 0].tolist() == expected


def test_photometric_shifts_keep_the_labels(dataset: Path) -> None:
    for name in ("fog_0.02", "rain", "night"):
        for paths in _test_paths(dataset):
            shifted = ss.SamplePaths.of(
                ss.shift_root(dataset, name), "test", paths.image.parent.name, _stem(paths)
            )
            for clean, copy in zip(paths.ground_truth(), shifted.ground_truth()):
                assert filecmp.cmp(clean, copy, shallow=False)
            assert shifted.image.read_bytes() != paths.image.read_bytes()


def test_night_is_darker_and_rain_adds_streaks(dataset: Path) -> None:
    paths = _test_paths(dataset)[0]
    clean = np.asarray(Image.open(paths.image)).astype(float)
    root = ss.shift_root
    night = ss.SamplePaths.of(root(dataset, "night"), "test", paths.image.parent.name, _stem(paths))
    assert np.asarray(Image.open(night.image)).mean() < 0.6 * clean.mean()
    depth = ss.read_depth(paths.depth)
    assert np.array_equal(ss.read_depth(str(paths.depth)), depth, equal_nan=True)  # a str too
    rainy = shifts.rain(clean.astype(np.uint8), depth, np.random.default_rng(0))
    dry = shifts.rain(clean.astype(np.uint8), np.zeros_like(depth), np.random.default_rng(0))
    assert (rainy.astype(int) - dry).max() > 60  # streaks and veil where there is distance


def test_anomaly_masks_align_with_void_labels(dataset: Path) -> None:
    anomaly_root = ss.shift_root(dataset, "anomaly")
    found = 0
    for paths in _test_paths(dataset):
        shifted = ss.SamplePaths.of(anomaly_root, "test", paths.image.parent.name, _stem(paths))
        labels = np.asarray(Image.open(shifted.label_ids))
        mask = np.asarray(Image.open(shifted.anomaly))
        assert set(np.unique(mask).tolist()) <= {0, 1, 255}
        np.testing.assert_array_equal(mask == 1, labels == shifts.ANOMALY_LABEL_ID)
        void = LABEL_ID_TO_TRAIN_ID[labels] == 255
        np.testing.assert_array_equal(mask == 255, void & (mask != 1))
        train_ids = np.asarray(Image.open(shifted.train_ids))
        assert (train_ids[mask == 1] == 255).all()
        clean = np.asarray(Image.open(paths.label_ids))
        # Same scene: only the anomalies change the labels (and, through the 2x2 majority
        # vote, at most the pixels touching them).
        near = binary_dilation(mask == 1, np.ones((3, 3), bool))
        np.testing.assert_array_equal(labels[~near], clean[~near])
        found += int((mask == 1).any())
    assert found >= TINY.test - 1


def test_newcity_is_a_different_style_with_valid_labels(dataset: Path) -> None:
    for paths in _test_paths(dataset):
        shifted = ss.SamplePaths.of(
            ss.shift_root(dataset, "newcity"), "test", paths.image.parent.name, _stem(paths)
        )
        assert shifted.image.read_bytes() != paths.image.read_bytes()
        assert shifted.label_ids.read_bytes() != paths.label_ids.read_bytes()
    ss.check_dataset(dataset)


def test_depth_encoding_round_trip() -> None:
    depth = np.array([[0.004, 1.234, np.inf, 1000.0]], dtype=np.float32)
    stored = ss.encode_depth(depth)
    assert stored.tolist() == [[1, 123, 0, 65535]]
    decoded = ss.decode_depth(stored)
    assert np.isinf(decoded[0, 2]) and decoded[0, 1] == pytest.approx(1.23)


def test_rendering_is_anti_aliased_and_sized() -> None:
    scene = ss.sample_scene(ss.image_rng(0, "val", 0))
    frame = ss.render(scene, 48, 96)
    assert frame.image.shape == (48, 96, 3) and frame.image.dtype == np.uint8
    assert frame.label_ids.shape == frame.depth.shape == (48, 96)
    # Box-filtered edges give colours between neighbours: many distinct values per channel.
    assert len(np.unique(frame.image[..., 0])) > 60


def test_config_validation() -> None:
    with pytest.raises(DataError, match="4096"):
        ss.SynthConfig(size=(2048, 4096))
    with pytest.raises(DataError, match="snow"):
        ss.SynthConfig(shifts=("fog", "snow"))
    with pytest.raises(DataError, match="train"):
        ss.SynthConfig(train=-1)
    with pytest.raises(DataError, match="object_scale"):
        ss.SynthConfig(object_scale=10.0)
    with pytest.raises(DataError, match="crowd"):
        ss.SynthConfig(crowd=0.0)
    # An empty set was written, and `data info` called it OK (0 images).
    with pytest.raises(DataError, match="no images asked for: give one of train, val, test"):
        ss.SynthConfig(train=0, val=0, test=0)
    assert ss.SynthConfig(train=1, val=0, test=0).count("train") == 1


def test_a_file_where_the_data_set_goes_is_named_by_its_path(tmp_path: Path) -> None:
    """It said '--out PATH is a file' also to an experiment, whose setting is data.root."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataError, match=f"^{afile} is a file, not a folder: the data set"):
        ss.generate(afile, ss.SynthConfig(size=(32, 64), train=1, val=0, test=0), progress=False)


def _train_id_pixels(config: ss.SynthConfig, images: int) -> np.ndarray:
    """[NUM_CLASSES] pixels of each class over the first `images` training scenes."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    style = config.style(ss.DEFAULT_STYLE)
    for index in range(images):
        scene = ss.sample_scene(ss.image_rng(config.seed, "train", index), style)
        train_ids = LABEL_ID_TO_TRAIN_ID[ss.render(scene, *config.size).label_ids]
        counts += np.bincount(train_ids[train_ids < NUM_CLASSES], minlength=NUM_CLASSES)
    return counts


def test_object_scale_and_crowd_enlarge_the_small_classes() -> None:
    """The quick configs' knobs: at object_scale 2.5 thin furniture and road users cover
    several times more pixels, crowd 2 adds rare-class instances; the defaults leave the
    realistic data set as it was (same scenes: the same random draws in the same order)."""
    names = ("pole", "traffic sign", "person", "rider", "bicycle")
    index = [CLASS_NAMES.index(name) for name in names]
    base = ss.SynthConfig(size=SIZE, seed=1)
    plain = _train_id_pixels(base, 12)
    scaled = _train_id_pixels(ss.SynthConfig(size=SIZE, seed=1, object_scale=2.5), 12)
    crowded = _train_id_pixels(ss.SynthConfig(size=SIZE, seed=1, crowd=2.0), 12)
    assert scaled[index].sum() > 3 * plain[index].sum(), (plain[index], scaled[index])
    assert crowded[index[2:]].sum() > 1.3 * plain[index[2:]].sum()

    # Walls, fences and motorcycles are few per image and often hidden by what crowd adds
    # in front of them: count the objects in the scenes (their area along the street for
    # walls and fences), not the visible pixels.
    def drawn(config: ss.SynthConfig, label: int, measure) -> float:
        style = config.style(ss.DEFAULT_STYLE)
        scenes = [ss.sample_scene(ss.image_rng(1, "train", i), style) for i in range(60)]
        return sum(measure(s) for scene in scenes for s in scene.surfaces if s.label == label)

    crowded = ss.SynthConfig(size=SIZE, seed=1, crowd=2.0)
    for label, measure in (
        (constants.WALL, lambda s: (s.s1 - s.s0) * (s.t1 - s.t0)),
        (constants.FENCE, lambda s: (s.s1 - s.s0) * (s.t1 - s.t0)),
        (constants.MOTORCYCLE, lambda s: 1),
    ):
        assert drawn(crowded, label, measure) > 1.5 * drawn(base, label, measure), label
    assert base.style(ss.DEFAULT_STYLE) == ss.DEFAULT_STYLE
    assert base.params()["object_scale"] == 1.0 and base.params()["crowd"] == 1.0


def _lone_objects(add) -> tuple[ss.Frame, ss.Frame]:
    """A sampled scene's street with only the objects `add(builder)` makes, rendered with
    the outlines of see-through objects and without them (outline=None)."""
    scene = ss.sample_scene(ss.image_rng(0, "val", 1))
    builder = layout.Builder(np.random.default_rng(0), scene.style, scene.street)
    add(builder)
    with_outline = replace(scene, surfaces=tuple(builder.surfaces), casters=())
    plain = tuple(replace(s, outline=None) for s in builder.surfaces)
    without = replace(with_outline, surfaces=plain)
    return ss.render(with_outline, 128, 256), ss.render(without, 128, 256)


@pytest.mark.parametrize(
    "name, add, gain",
    [
        ("fence", lambda b: buildings._add_fence(b, -5.0, 6.0, 40.0, 2.0), 1.5),
        (
            "bicycle",
            lambda b: people.add_two_wheeler(
                b, "side", -3.0, 5.0, forward=True, motor=False, rider=False
            ),
            1.5,
        ),
        (
            "motorcycle",
            lambda b: people.add_two_wheeler(
                b, "side", 3.0, 5.0, forward=False, motor=True, rider=False
            ),
            1.1,  # engine and tank are solid; only the wheels fill
        ),
    ],
)
def test_see_through_objects_are_labelled_by_their_outline(name: str, add, gain: float):
    """The gaps of a fence and the wheels of a two-wheeler carry its label, as an
    annotator's polygon would, while their pixels still show what is behind."""
    label_id = name2label[name].id
    outlined, plain = _lone_objects(add)
    inside = outlined.label_ids == label_id
    drawn = plain.label_ids == label_id
    assert drawn.sum() > 100
    assert (inside | ~drawn).all()  # every drawn pixel keeps its label
    assert inside.sum() > gain * drawn.sum(), (inside.sum(), drawn.sum())
    gaps = inside & ~drawn
    assert set(np.unique(plain.label_ids[gaps]).tolist()) <= {
        constants.ROAD,
        constants.SIDEWALK,
        constants.TERRAIN,
        constants.SKY,
    }
    # Only the labels change: the gaps show what is behind. (The haze follows the depth of
    # the sample whose label wins a pixel, which may move at the object's border.)
    changed = np.abs(outlined.image.astype(int) - plain.image).max(axis=-1) > 0
    assert changed.mean() < 0.005


def test_walls_show_masonry_courses() -> None:
    """Free-standing walls are not facade-coloured plaster: blocks in courses, lighter
    mortar joints and a coping along the top."""
    rgb = np.asarray(buildings._WALL_STONES[0], np.float32)
    material = buildings._masonry(rgb, np.random.default_rng(0), height=2.0)
    mortar_rgb = np.clip(rgb * 1.35, 0, 1)
    y = np.linspace(0.0, 1.8, 400, dtype=np.float32)
    across = material(np.full_like(y, 0.37), y)
    mortar = np.isclose(across, mortar_rgb).all(axis=1)
    assert 0.05 < mortar.mean() < 0.25  # horizontal joints between courses
    x = np.linspace(0.0, 4.0, 400, dtype=np.float32)
    along = material(x, np.full_like(x, 0.2))
    joints = np.isclose(along, mortar_rgb).all(axis=1)
    assert 0.0 < joints.mean() < 0.2  # vertical joints between blocks
    top = material(np.full(10, 0.37, np.float32), np.linspace(1.9, 1.99, 10, dtype=np.float32))
    assert not np.allclose(top, across[:10])  # the coping


def _interior_by_loops(train_ids: np.ndarray, radius: int) -> np.ndarray:
    """interior_counts the slow way: look at every neighbour of every pixel."""
    height, width = train_ids.shape
    counts = np.zeros(256, np.int64)
    for y in range(height):
        for x in range(width):
            window = train_ids[
                max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1
            ]
            if np.all(window == train_ids[y, x]):
                counts[train_ids[y, x]] += 1
    return counts


@pytest.mark.parametrize("radius", [1, 2])
def test_interior_counts_match_a_neighbourhood_loop(radius: int) -> None:
    rng = np.random.default_rng(radius)
    train_ids = np.zeros((17, 23), np.uint8)  # road
    train_ids[:, 9:12] = 5  # a 3-pixel pole: no interior at radius 2
    train_ids[2:12, 14:22] = 13  # a car touching nothing but road
    train_ids[13:, :4] = 255  # void in a corner, against the image edge
    train_ids[rng.random(train_ids.shape) < 0.02] = 11  # scattered single pixels
    got = ss.interior_counts(train_ids, radius)
    np.testing.assert_array_equal(got, _interior_by_loops(train_ids, radius))
    assert got.sum() < train_ids.size
    if radius == 2:
        assert got[5] == 0


def test_rain_follows_its_model_with_the_generator_constants(monkeypatch) -> None:
    """I = R' (1 - S - A) + g S + L A with R' = 0.7 R, A = 1 - exp(-0.015 d), S the streak
    layer times 0.45 (1 - exp(-0.05 d)), L = 0.65 (the module's generator 1.1 constants);
    the random streak layer is fixed here so that every pixel can be recomputed."""
    layer = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    monkeypatch.setattr(shifts, "_streak_layer", lambda shape, rng: layer)
    image = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    depth = np.array([[0, 1, 5, 10], [20, 40, 80, 160], [300, 1000, np.inf, np.inf]])
    veil = (1 - np.exp(-0.015 * depth))[..., None]
    streaks = (0.45 * layer * (1 - np.exp(-0.05 * depth)))[..., None]
    clean = 0.7 * image / 255.0
    expected = np.rint(255 * np.clip(clean * (1 - streaks - veil) + streaks + 0.65 * veil, 0, 1))
    out = shifts.rain(image, depth.astype(np.float32), np.random.default_rng(0))
    assert np.abs(out.astype(int) - expected).max() <= 1  # float32 vs float64 rounding


def test_rain_streaks_cover_about_their_density_times_their_length() -> None:
    """Drops of density 0.01 smeared over round(0.07 H) = 14 rows: about 1 - 0.99^14 = 13 %
    of the pixels lie on a streak."""
    layer = shifts._streak_layer((200, 300), np.random.default_rng(0))
    assert 0.0 <= layer.min() and layer.max() <= 1.0
    assert 0.10 < (layer > 0).mean() < 0.16


class _FixedDraws:
    """A generator stand-in: exposure 0.1, no sensor noise."""

    def uniform(self, low: float, high: float) -> float:
        assert (low, high) == (0.08, 0.16)  # the module's NIGHT_EXPOSURE
        return 0.1

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)


def test_night_darkens_linear_light_and_paints_the_sky() -> None:
    """Far from the headlights the linear scene light (gamma 2.2) is scaled by the
    exposure; the sky becomes the night sky colour (0.010, 0.012, 0.025) in linear light."""
    image = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    depth = np.full((4, 6), 1e6, np.float32)  # far: no headlight reaches it
    depth[0, :2] = np.inf
    out = night_of(image, depth)
    linear = (image / 255.0) ** 2.2
    expected = np.rint(255 * (0.1 * linear) ** (1 / 2.2))
    expected[0, :2] = np.rint(255 * np.array([0.010, 0.012, 0.025]) ** (1 / 2.2))
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_night_headlights_light_the_near_lower_image() -> None:
    """Dipped beams: nothing in the top 35 % of the image; below, near pixels are lit more
    than far ones, falling off as 1 / (1 + (d / 12)^2)."""
    image = np.full((20, 21, 3), 128, np.uint8)
    near = night_of(image, np.full((20, 21), 6.0, np.float32)).astype(float)
    far = night_of(image, np.full((20, 21), 60.0, np.float32)).astype(float)
    dark = night_of(image, np.full((20, 21), 1e6, np.float32)).astype(float)
    assert np.array_equal(near[:7], dark[:7])  # rows whose centres lie above 0.35 H
    assert (near[14:, 10] > far[14:, 10]).all() and (far[14:, 10] > dark[14:, 10]).all()
    # The centre column of the bottom rows has the full beam (vertical and lateral 1).
    linear = (128 / 255) ** 2.2
    for depth, lit in ((6.0, near), (60.0, far)):
        light = 0.1 + 1.6 / (1 + (depth / 12) ** 2)
        assert abs(lit[19, 10, 0] - np.rint(255 * min(1.0, linear * light) ** (1 / 2.2))) <= 1


def night_of(image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    return shifts.night(image, depth, _FixedDraws())  # type: ignore[arg-type]


def test_void_label_ids_are_the_official_ones() -> None:
    """The generator's void labels (and the anomalies' "dynamic") carry the ids the official
    table gives their names, and all are void."""
    assert {name: name2label[name].id for name in VOID_LABEL_IDS} == VOID_LABEL_IDS
    assert all(name2label[name].trainId in (255, -1) for name in VOID_LABEL_IDS)
    assert shifts.ANOMALY_LABEL_ID == name2label["dynamic"].id


def test_fog_of_the_sky_is_the_overcast_airlight() -> None:
    """Infinitely far (t = 0) only the atmospheric light is seen: 0.8 of white, 204."""
    image = np.random.default_rng(2).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    out = shifts.fog(image, np.full((2, 3), np.inf, np.float32), beta=0.005)
    assert (out == 204).all()


def test_shifts_are_expanded_in_a_fixed_order_and_dispatched_by_kind() -> None:
    specs = shifts.expand_shifts(["night", "anomaly", "fog"])
    assert [(s.name, s.beta, s.photometric) for s in specs] == [
        ("fog_0.005", 0.005, True),
        ("fog_0.01", 0.01, True),
        ("fog_0.02", 0.02, True),
        ("night", None, True),
        ("anomaly", None, False),
    ]
    image = np.random.default_rng(3).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    depth = np.full((8, 10), 30.0, np.float32)
    for spec, model in ((specs[1], "fog"), (shifts.ShiftSpec("rain", "rain"), "rain")):
        out = shifts.apply_photometric(spec, image, depth, np.random.default_rng(4))
        if model == "fog":
            expected = shifts.fog(image, depth, 0.01)
        else:
            expected = shifts.rain(image, depth, np.random.default_rng(4))
        assert np.array_equal(out, expected), spec.name


# --- Promises a user relies on: splits, names, statistics, resuming, checking, labels ---


def _label_files(tree: Path, split: str) -> list[Path]:
    return sorted((tree / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))


def test_no_two_images_share_a_scene(dataset: Path) -> None:
    """Every image draws from its own (seed, split, index): no split repeats another's
    scenes and no image within a split repeats another."""
    files = {
        split: [(p, p.read_bytes()) for p in _label_files(dataset, split)] for split in ss.SPLITS
    }
    assert [len(files[split]) for split in ss.SPLITS] == [TINY.train, TINY.val, TINY.test]
    labels = [content for split in ss.SPLITS for _, content in files[split]]
    assert len(set(labels)) == len(labels)
    images = [p.read_bytes() for p in sorted(dataset.glob("leftImg8bit/*/*/*_leftImg8bit.png"))]
    assert len(images) == len(labels) and len(set(images)) == len(images)


def test_files_are_named_by_their_splits_cities_in_turn(dataset: Path) -> None:
    """Images take their split's cities in turn; seq counts the images of a city."""
    expected = {
        "train": ["ashford_000000_000019", "brenton_000000_000019"],
        "val": ["glenrock_000000_000019"],
        "test": ["ironbridge_000000_000019", "ironbridge_000001_000019", "juniper_000000_000019"],
    }
    for split, stems in expected.items():
        found = sorted(
            f"{p.parent.name}/{p.name}" for p in (dataset / "leftImg8bit" / split).glob("*/*.png")
        )
        assert found == sorted(f"{s.split('_')[0]}/{s}_leftImg8bit.png" for s in stems), split
        for shift in ("fog_0.02", "newcity", "anomaly"):
            tree = ss.shift_root(dataset, shift) / "leftImg8bit" / "test"
            assert sorted(p.name for p in tree.glob("*/*.png")) == sorted(
                f"{s}_leftImg8bit.png" for s in expected["test"]
            )


def test_meta_class_statistics_match_the_files(dataset: Path) -> None:
    """class_pixels and class_images of every split and shifted copy, recounted from the
    label files with the official table's train ids."""
    meta = ss.read_meta(dataset)
    to_train = np.full(256, 255, np.int64)
    for label_id, label in id2label.items():
        if label_id >= 0 and 0 <= label.trainId < 255:
            to_train[label_id] = label.trainId
    trees = {split: (dataset, split) for split in ss.SPLITS}
    trees |= {name: (ss.shift_root(dataset, name), "test") for name in meta["shifts"]}
    assert set(meta["class_pixels"]) == set(meta["class_images"]) == set(trees)
    for group, (tree, split) in trees.items():
        pixels, images = np.zeros(256, np.int64), np.zeros(256, np.int64)
        paths = _label_files(tree, split)
        for path in paths:
            counts = np.bincount(to_train[np.asarray(Image.open(path))].ravel(), minlength=256)
            pixels += counts
            images += counts > 0
        assert sum(meta["class_pixels"][group].values()) == len(paths) * SIZE[0] * SIZE[1]
        for name, stored, counted in (
            ("class_pixels", meta["class_pixels"][group], pixels),
            ("class_images", meta["class_images"][group], images),
        ):
            expected = {n: int(counted[i]) for i, n in enumerate(CLASS_NAMES)}
            assert stored == {**expected, "void": int(counted[255])}, (group, name)


def test_anomaly_pixels_show_the_pasted_object(dataset: Path) -> None:
    """The mask marks what was pasted: every pixel labelled anomaly looks different from the
    clean image (same scene, same sensor noise); a label covering more than the object
    (its bounding box, say) would mark unchanged road."""
    anomaly_root = ss.shift_root(dataset, "anomaly")
    marked = 0
    for paths in _test_paths(dataset):
        shifted = ss.SamplePaths.of(anomaly_root, "test", paths.image.parent.name, _stem(paths))
        mask = np.asarray(Image.open(shifted.anomaly)) == 1
        clean, pasted = (np.asarray(Image.open(p.image)).astype(int) for p in (paths, shifted))
        assert (clean != pasted).any(axis=-1)[mask].all()
        marked += int(mask.sum())
    assert marked > 20


def _street_with(adds, size=(64, 128)) -> ss.Frame:
    """A sampled scene's street (no objects, no shadows) with what `adds` put on it."""
    scene = ss.sample_scene(ss.image_rng(0, "val", 1))
    builder = layout.Builder(np.random.default_rng(0), scene.style, scene.street)
    for add in adds:
        add(builder)
    return ss.render(replace(scene, surfaces=tuple(builder.surfaces), casters=()), *size)


def test_labels_sit_on_the_pixels_that_show_the_objects() -> None:
    """A person left of the camera axis and a car right of it: every pixel whose label
    they change shows a changed image, every changed pixel (the hood, which mirrors the
    scene, aside) is within one pixel of a changed label, and the person lies left of the
    image centre, the car right of it."""
    empty = _street_with([])
    full = _street_with(
        [
            lambda b: people.add_person(b, -2.0, 8.0),
            lambda b: vehicles.add_vehicle(b, "car", 2.0, 9.0, False),
        ]
    )
    relabelled = full.label_ids != empty.label_ids
    in_view = LABEL_ID_TO_TRAIN_ID[empty.label_ids] != 255  # not the hood (it mirrors)
    changed = (full.image != empty.image).any(axis=-1) & in_view
    assert relabelled.sum() > 300
    assert set(np.unique(full.label_ids[relabelled]).tolist()) == {constants.PERSON, constants.CAR}
    assert changed[relabelled].all()
    assert not (changed & ~binary_dilation(relabelled, np.ones((3, 3), bool))).any()
    columns = np.nonzero(full.label_ids == constants.PERSON)[1]
    assert columns.max() < SIZE[1] // 2 <= np.nonzero(full.label_ids == constants.CAR)[1].min()


def _two_wheeler(kind: str, motor: bool, rider: bool):
    if kind == "rear":
        return lambda b: people.add_two_wheeler_rear(b, 1.0, 7.0, motor=motor, rider=rider)
    pos, start = (3.0, 5.0) if kind == "side" else (6.0, -1.0)
    return lambda b: people.add_two_wheeler(
        b, kind, pos, start, forward=True, motor=motor, rider=rider
    )


@pytest.mark.parametrize("kind", ["side", "front", "rear"])
@pytest.mark.parametrize("motor", [False, True])
def test_a_rider_is_labelled_rider(kind: str, motor: bool) -> None:
    """The rider on a two-wheeler is `rider`, never `person`: adding the rider turns the
    pixels it covers (all but a few at its border, moved by the 2x2 vote) into rider."""
    alone = _street_with([_two_wheeler(kind, motor, rider=False)])
    ridden = _street_with([_two_wheeler(kind, motor, rider=True)])
    changed = ridden.label_ids != alone.label_ids
    assert (ridden.label_ids == constants.PERSON).sum() == 0
    assert (ridden.label_ids[changed] == constants.RIDER).sum() >= max(15, 0.95 * changed.sum())


def test_each_object_has_its_own_instance_id() -> None:
    """Instance ids count the objects of a class from 0: two people apart and a car give
    person * 1000 + {0, 1} and car * 1000 + 0."""
    frame = _street_with(
        [
            lambda b: people.add_person(b, -3.0, 8.0),
            lambda b: people.add_person(b, -1.0, 8.0),
            lambda b: vehicles.add_vehicle(b, "car", 2.0, 9.0, False),
        ]
    )
    person, car = constants.PERSON, constants.CAR
    assert set(np.unique(frame.instance_ids[frame.label_ids == person]).tolist()) == {
        person * 1000,
        person * 1000 + 1,
    }
    assert set(np.unique(frame.instance_ids[frame.label_ids == car]).tolist()) == {car * 1000}


def test_object_scale_reaches_the_newcity_copy(tmp_path: Path) -> None:
    """The newcity copy is drawn with the data set's object scale too (its thin classes
    grow with it, same scenes otherwise)."""
    thin = [name2label[n].id for n in ("pole", "traffic sign", "person", "rider", "bicycle")]
    pixels = []
    for scale in (1.0, 2.5):
        root = tmp_path / str(scale)
        config = ss.SynthConfig(
            size=SIZE, train=0, val=0, test=2, seed=1, shifts=("newcity",), object_scale=scale
        )
        ss.generate(root, config, progress=False)
        files = _label_files(ss.shift_root(root, "newcity"), "test")
        pixels.append(sum(np.isin(np.asarray(Image.open(p)), thin).sum() for p in files))
    assert pixels[1] > 2 * pixels[0], pixels


def test_a_set_with_other_parameters_is_refused_and_a_forced_one_keeps_other_files(
    tmp_path: Path,
) -> None:
    """Every parameter that decides the files is compared: the same set is "already
    there", any other is refused without force; --force replaces only what it wrote."""
    base = ss.SynthConfig(size=(32, 64), train=1, val=0, test=1, shifts=("rain",))
    assert ss.generate(tmp_path, base, progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert not ss.generate(tmp_path, base, progress=False)
    changes = [
        {"seed": 1},
        {"size": (32, 96)},
        {"train": 2},
        {"test": 2},
        {"shifts": ("fog",)},
        {"object_scale": 2.0},
        {"crowd": 2.0},
    ]
    for change in changes:
        with pytest.raises(DataError, match="different SynthStreets data set"):
            ss.generate(tmp_path, replace(base, **change), progress=False)
    assert ss.read_meta(tmp_path)["params"] == base.params()
    assert ss.generate(tmp_path, replace(base, seed=1), force=True, progress=False)
    assert notes.read_text() == "mine"
    assert not (ss.shift_root(tmp_path, "rain") / "leftImg8bit" / "test" / "juniper").exists()


def test_an_interrupted_generation_resumed_gives_the_same_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed midway, a generation leaves no meta.json (so it is not taken for a finished
    set); the next run redoes it, also over files cut short or left from a larger run:
    byte-identical to an uninterrupted run."""
    config = ss.SynthConfig(size=(32, 64), train=2, val=1, test=1, shifts=("fog", "anomaly"))
    ss.generate(tmp_path / "clean", config, progress=False)
    root = tmp_path / "resumed"
    run_job, jobs = files._run_job, []

    def killed_at_the_third(job):
        jobs.append(job)
        if len(jobs) == 3:
            raise KeyboardInterrupt
        return run_job(job)

    monkeypatch.setattr(files, "_run_job", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        ss.generate(root, config, progress=False)
    monkeypatch.undo()
    assert not (root / ss.META_FILE).exists() and (root / ss.PARTIAL_FILE).exists()
    images = sorted(root.rglob("*_leftImg8bit.png"))
    assert len(images) == 2
    images[0].write_bytes(images[0].read_bytes()[:100])
    stale = images[1].with_name("calder_000007_000019_leftImg8bit.png")
    stale.write_bytes(images[1].read_bytes())
    assert ss.generate(root, config, progress=False)
    assert _files(root) == _files(tmp_path / "clean")


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    config = ss.SynthConfig(size=(32, 64), train=0, val=0, test=2, seed=3, shifts=("anomaly",))
    assert ss.generate(tmp_path, config, progress=False)
    ss.check_dataset(tmp_path)
    return tmp_path


def _edit(path: Path, change) -> None:
    array = np.array(Image.open(path))
    change(array)
    Image.fromarray(array).save(path)


def _road_pixel(paths: ss.SamplePaths) -> tuple[int, int]:
    rows, cols = np.nonzero(np.asarray(Image.open(paths.label_ids)) == constants.ROAD)
    return int(rows[0]), int(cols[0])


def _break(kind: str, root: Path) -> None:
    paths = ss.SamplePaths.of(root, "test", *ss.image_name("test", 0))
    y, x = _road_pixel(paths)
    if kind == "train ids":
        _edit(paths.train_ids, lambda a: a.__setitem__((y, x), 1))  # sidewalk on road
    elif kind == "instance ids":
        _edit(paths.instance_ids, lambda a: a.__setitem__((y, x), constants.ROAD * 1000))
    elif kind == "sky depth":
        sky = np.nonzero(np.asarray(Image.open(paths.label_ids)) == constants.SKY)
        _edit(paths.depth, lambda a: a.__setitem__((sky[0][0], sky[1][0]), 5000))
    elif kind == "label ids":  # an id of no Cityscapes class, its other files agreeing
        _edit(paths.label_ids, lambda a: a.__setitem__((y, x), 40))
        _edit(paths.train_ids, lambda a: a.__setitem__((y, x), 255))
        _edit(paths.instance_ids, lambda a: a.__setitem__((y, x), 40))
    elif kind == "class counts":  # road -> sidewalk in all three label files
        for path, value in ((paths.label_ids, 8), (paths.train_ids, 1), (paths.instance_ids, 8)):
            _edit(path, lambda a, v=value: a.__setitem__((y, x), v))
    elif kind == "anomaly mask":
        shifted = ss.SamplePaths.of(
            ss.shift_root(root, "anomaly"), "test", *ss.image_name("test", 0)
        )
        _edit(shifted.anomaly, lambda a: a.__setitem__(_road_pixel(shifted), 1))
    else:  # a missing image
        paths.image.unlink()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("train ids", "train ids do not match"),
        ("instance ids", "instance ids do not match"),
        ("sky depth", "sky pixels must have depth 0"),
        ("label ids", r"label ids \[40\] are not Cityscapes ids"),
        ("class counts", "class pixel counts of test do not match"),
        ("anomaly mask", "anomaly mask does not match"),
        ("image", "1 images, meta.json says 2"),
    ],
)
def test_check_names_each_kind_of_broken_file(small_set: Path, kind: str, message: str) -> None:
    _break(kind, small_set)
    with pytest.raises(DataError, match=message):
        ss.check_dataset(small_set)


def test_the_image_border_is_out_of_roi(dataset: Path) -> None:
    """As in Cityscapes, a margin of max(1, round(0.004 W)) = 1 pixel on the left, right and
    bottom is `out of roi` (void), in every split and shifted copy."""
    trees = [(dataset, split) for split in ss.SPLITS]
    trees += [(ss.shift_root(dataset, name), "test") for name in ("newcity", "anomaly")]
    for tree, split in trees:
        for path in _label_files(tree, split):
            labels = np.asarray(Image.open(path))
            border = np.concatenate([labels[:, 0], labels[:, -1], labels[-1, :]])
            assert (border == name2label["out of roi"].id).all(), path
            assert (labels[:-1, 1:-1] != name2label["out of roi"].id).all(), path


def _drawn_area(add, scale: float, label: int) -> int:
    """Pixels labelled `label` of what `add` puts on an empty street at `object_scale`."""
    scene = ss.sample_scene(ss.image_rng(0, "val", 1))
    style = replace(scene.style, object_scale=scale)
    builder = layout.Builder(np.random.default_rng(0), style, scene.street)
    add(builder)
    lone = replace(scene, style=style, surfaces=tuple(builder.surfaces), casters=())
    return int((ss.render(lone, *SIZE).label_ids == label).sum())


@pytest.mark.parametrize(
    "add, label, low, high",
    [  # people and two-wheelers grow in both directions: scale^2 = 6.25 times the pixels
        (lambda b: people.add_person(b, -1.0, 12.0), constants.PERSON, 4.5, 8.0),
        (
            lambda b: people.add_two_wheeler(
                b, "front", 12.0, -1.0, forward=True, motor=False, rider=False
            ),
            constants.BICYCLE,
            4.5,
            8.0,
        ),
        (
            lambda b: people.add_two_wheeler_rear(b, 1.0, 12.0, motor=True, rider=False),
            constants.MOTORCYCLE,
            4.5,
            8.0,
        ),
        # lights and sign faces too (a few pixels at this size: only "clearly larger")
        (lambda b: furniture.add_traffic_light(b, 2.0, 10.0, None), constants.LIGHT, 2.0, 10.0),
        (lambda b: furniture.add_sign_post(b, 2.0, 10.0), constants.SIGN, 2.0, 10.0),
    ],
    ids=["person", "bicycle", "motorcycle", "traffic light", "traffic sign"],
)
def test_object_scale_enlarges_each_small_object(add, label: int, low: float, high: float):
    plain, scaled = _drawn_area(add, 1.0, label), _drawn_area(add, 2.5, label)
    assert plain > 5
    assert low < scaled / plain < high, (plain, scaled)


def test_crowd_raises_the_truck_and_bus_shares() -> None:
    """crowd 2 doubles the truck and bus shares of the traffic (counted as vehicles, not
    pixels, over the same 40 scenes)."""

    def vehicles_of(crowd: float) -> dict[int, int]:
        style = ss.SynthConfig(crowd=crowd).style(ss.DEFAULT_STYLE)
        found: dict[int, set] = {constants.TRUCK: set(), constants.BUS: set()}
        for index in range(40):
            for s in ss.sample_scene(ss.image_rng(1, "train", index), style).surfaces:
                if s.label in found:
                    found[s.label].add((index, s.instance))
        return {label: len(ids) for label, ids in found.items()}

    plain, crowded = vehicles_of(1.0), vehicles_of(2.0)
    for label in (constants.TRUCK, constants.BUS):
        assert plain[label] > 3 and crowded[label] > 1.5 * plain[label], (plain, crowded)


# --- Second audit: depth geometry, anomaly placement, clutter labels, bounds, seeds ---


def test_depth_follows_the_pinhole_camera_and_the_hood_reads_two_metres() -> None:
    """Depth along the optical axis, from the documented camera (focal = focal * width,
    horizon row = horizon * height, 2x supersampled, the majority sample kept): the ground
    at supersampled row v lies at f h / (v + 0.5 - v0), a street-facing wall at X = x at
    f x / (u + 0.5 - cx), a camera-facing person at its Z, and the hood reads 2 m."""
    height, width = SIZE
    camera = ss.sample_scene(ss.image_rng(0, "val", 1)).camera
    frame = _street_with(
        [
            lambda b: people.add_person(b, 1.0, 8.0),
            lambda b: buildings._add_wall(b, -6.0, 10.0, 40.0, 2.0),
        ]
    )
    labels, depth = frame.label_ids, frame.depth.astype(np.float64)
    f, v0, cx = camera.focal * 2 * width, camera.horizon * 2 * height, float(width)

    def ground(v: np.ndarray) -> np.ndarray:
        return f * camera.height / (v + 0.5 - v0)

    rows, cols = np.nonzero(np.isin(labels, [constants.ROAD, constants.SIDEWALK]))
    near = ground(2 * rows) < 300  # far from the horizon (and from the 650 m cut)
    rows, cols = rows[near], cols[near]
    assert rows.size > 500
    got = depth[rows, cols]  # either sample row of the 2x2 block may have won the vote
    assert (got <= ground(2 * rows) * (1 + 1e-5)).all()
    assert (got >= ground(2 * rows + 1) * (1 - 1e-5)).all()

    rows, cols = np.nonzero(labels == constants.WALL)
    assert rows.size > 20
    u = np.stack([2 * cols, 2 * cols + 1]) + 0.5 - cx
    z = np.clip(f * -6.0 / u, 10.0, 40.0)
    got = depth[rows, cols]
    assert (got >= z.min(axis=0) * (1 - 1e-5)).all() and (got <= z.max(axis=0) * (1 + 1e-5)).all()

    assert (labels == constants.PERSON).sum() > 20
    assert (depth[labels == constants.PERSON] == 8.0).all()
    hood = labels == constants.EGO
    assert hood.sum() > 100 and (depth[hood] == 2.0).all()


def test_anomalies_are_one_to_three_with_the_first_ahead_in_the_cameras_lane() -> None:
    """1 to 3 objects labelled `dynamic` are added to an unchanged scene; the first stands
    8 to 40 m ahead in the lane the camera drives in (the one holding X = 0), at least 2 m
    before that lane's first vehicle."""
    dynamic = name2label["dynamic"].id
    vehicles_ = {constants.CAR, constants.TRUCK, constants.BUS, constants.TRAIN}
    counts = set()
    for index in range(30):
        scene = ss.sample_scene(ss.image_rng(4, "test", index))
        pasted = ss.add_anomalies(scene, np.random.default_rng(index))
        assert pasted.surfaces[: len(scene.surfaces)] == scene.surfaces
        added = pasted.surfaces[len(scene.surfaces) :]
        counts.add(len(added))
        assert {s.label for s in added} == {dynamic}
        first = added[0]
        centre = (first.s0 + first.s1) / 2
        assert first.facing == "front" and 8.0 <= first.pos <= 40.0
        assert abs(centre) < 0.5 * ss.DEFAULT_STYLE.lane_width[1]  # within the camera's lane
        ahead = [
            s.pos
            for s in scene.surfaces
            if s.label in vehicles_ and s.facing == "front" and s.s0 < centre < s.s1
        ]
        assert first.pos <= min(ahead, default=np.inf) - 2.0, (index, first.pos, ahead)
    assert counts == {1, 2, 3}


def test_street_clutter_is_static_and_advertising_columns_unlabeled() -> None:
    """Bins, benches and utility boxes (at most 1.3 m tall) are `static`, advertising
    columns (3 m) `unlabeled`; no clean scene holds `dynamic`, the anomalies' label."""
    static, unlabeled = name2label["static"].id, name2label["unlabeled"].id
    found = {static: 0, unlabeled: 0}
    for index in range(40):
        for s in ss.sample_scene(ss.image_rng(0, "train", index)).surfaces:
            assert s.label != name2label["dynamic"].id
            if s.label in found:
                found[s.label] += 1
                tall = s.t1 - s.t0 > 2.0
                assert tall == (s.label == unlabeled), (s.label, s.t1 - s.t0)
    assert min(found.values()) > 3, found


def test_size_object_scale_and_crowd_bounds_are_inclusive(tmp_path: Path) -> None:
    """16x32 up to 1024x2048, object scale and crowd 0.5 to 4: the bounds themselves are
    allowed, a hair beyond is refused, and the smallest set with every shift is valid."""
    for value in (0.5, 4.0):
        ss.SynthConfig(object_scale=value, crowd=value)
    for name in ("object_scale", "crowd"):
        for value in (0.49, 4.01):
            with pytest.raises(DataError, match=name):
                ss.SynthConfig(**{name: value})
    ss.SynthConfig(size=(1024, 2048))
    for size in ((15, 32), (16, 31), (1025, 2048), (1024, 2049)):
        with pytest.raises(DataError, match="outside 16x32"):
            ss.SynthConfig(size=size)
    config = ss.SynthConfig(size=(16, 32), train=1, val=0, test=1, object_scale=4.0, crowd=4.0)
    assert ss.generate(tmp_path, config, progress=False)
    meta, reports = ss.check_dataset(tmp_path)
    assert [r.images for r in reports] == [1, 0, 1] + [1] * 7
    image = np.asarray(Image.open(next(tmp_path.glob("leftImg8bit/test/*/*.png"))))
    assert image.shape == (16, 32, 3)


def test_photometric_copies_are_recomputed_exactly_from_the_files_and_the_seed(
    dataset: Path,
) -> None:
    """Fog, rain and night are functions of the clean image file, the depth file and
    the image's own generator, seeded by (seed, split, index) and the shift name: each
    copy is reproduced byte for byte from those alone."""
    for index, paths in enumerate(_test_paths(dataset)):
        clean = np.asarray(Image.open(paths.image))
        depth = ss.read_depth(paths.depth)
        for name in ("fog_0.01", "rain", "night"):
            spec = next(s for s in shifts.expand_shifts(shifts.SHIFT_KINDS) if s.name == name)
            seed = [TINY.seed, ss.SPLITS.index("test"), index, zlib.crc32(name.encode())]
            expected = shifts.apply_photometric(spec, clean, depth, np.random.default_rng(seed))
            copy = ss.SamplePaths.of(ss.shift_root(dataset, name), "test", *_city_stem(paths))
            np.testing.assert_array_equal(np.asarray(Image.open(copy.image)), expected)


def _city_stem(paths: ss.SamplePaths) -> tuple[str, str]:
    return paths.image.parent.name, _stem(paths)


def test_newcity_copy_redraws_the_images_own_scene_seed_in_the_newcity_style(
    dataset: Path,
) -> None:
    """ "Same per-image seeds, so also other layouts": the newcity labels are those of the
    scene drawn from the clean image's (seed, split, index) in the newcity style."""
    style = TINY.style(ss.NEWCITY_STYLE)
    for index, paths in enumerate(_test_paths(dataset)):
        scene = ss.sample_scene(ss.image_rng(TINY.seed, "test", index), style)
        copy = ss.SamplePaths.of(ss.shift_root(dataset, "newcity"), "test", *_city_stem(paths))
        labels = np.asarray(Image.open(copy.label_ids))
        np.testing.assert_array_equal(labels, ss.render(scene, *SIZE).label_ids)


def test_ground_labels_of_road_curb_verge_sidewalk_lots_and_cross_street() -> None:
    """The ground across a street with a 1 m verge on the left: road between the road
    edges, the 0.22 m curb band and the paved strip are sidewalk, the verge terrain, and
    beyond the sidewalks the lots (forecourt sidewalk, park terrain); a cross street is
    road right across the sidewalks."""
    material = ss.DEFAULT_STYLE  # unused by the labels; any object will do
    street = layout.Street(
        road_left=-4.0,
        road_right=3.0,
        sidewalk_left=2.0,
        sidewalk_right=3.0,
        verge_left=1.0,
        verge_right=0.0,
        crossings=((40.0, 52.0),),
        lots_left=layout.Lots((0.0, 20.0, 40.0, 52.0), (8, 22, 7, 8)),
        lots_right=layout.Lots((0.0, 40.0, 52.0), (22, 7, 8)),
        road_material=material,
        sidewalk_material=material,
        terrain_material=material,
    )
    road, walk, grass = constants.ROAD, constants.SIDEWALK, constants.TERRAIN
    cases = [  # (x, z, label): left lot, sidewalk, verge, curb band, road, curb, right
        (-8.0, 10.0, walk),  # left lot 0..20: a forecourt
        (-8.0, 30.0, grass),  # left lot 20..40: a park
        (-6.5, 30.0, walk),  # left sidewalk (outer edge at -4 - 1 - 2 = -7)
        (-4.8, 30.0, grass),  # the verge, -5.22 .. -4.22
        (-4.1, 30.0, walk),  # the curb band beside the road
        (-3.9, 30.0, road),
        (2.9, 30.0, road),
        (3.1, 30.0, walk),  # curb band, no verge on the right
        (5.5, 30.0, walk),
        (6.5, 30.0, grass),  # right lot 0..40: a park
        (-6.5, 45.0, road),  # the cross street crosses the sidewalks and the verge
        (-4.8, 45.0, road),
        (5.5, 45.0, road),
        (-8.0, 45.0, road),  # and the lots
        (-8.0, 60.0, walk),
        (6.5, 60.0, walk),
    ]
    # Lots as the sampler makes them: a building's forecourt is paved, a park is grass.
    lots = [layout.Lot(0.0, 20.0, "building"), layout.Lot(20.0, 40.0, "park")]
    lots.append(layout.Lot(40.0, 52.0, "crossing"))
    assert layout._lots_ground(lots) == layout.Lots((0.0, 20.0, 40.0), (walk, grass, road))
    x = np.array([c[0] for c in cases], np.float32)
    z = np.array([c[1] for c in cases], np.float32)
    got = _ground_labels(street, x, z)
    assert got.tolist() == [c[2] for c in cases]


def test_street_furniture_carries_its_classes() -> None:
    """A lamp is pole from foot to head (its arm and lamp head too), a sign post is a pole
    with sign faces, a traffic light a pole with its housing; an overhead light adds an
    arm (pole) and a second housing."""
    builder = layout.Builder(np.random.default_rng(0), ss.DEFAULT_STYLE, None)  # type: ignore[arg-type]
    furniture.add_lamp(builder, 5.0, 10.0, 1)
    assert [s.label for s in builder.surfaces] == [constants.POLE] * 3
    builder.surfaces.clear()
    furniture.add_sign_post(builder, 5.0, 10.0)
    labels = [s.label for s in builder.surfaces]
    assert labels[0] == constants.POLE and set(labels[1:]) == {constants.SIGN}
    builder.surfaces.clear()
    furniture.add_traffic_light(builder, 5.0, 10.0, None)
    assert [s.label for s in builder.surfaces] == [constants.POLE, constants.LIGHT]
    builder.surfaces.clear()
    furniture.add_traffic_light(builder, 5.0, 10.0, 0.0)
    expected = [constants.POLE, constants.LIGHT, constants.POLE, constants.LIGHT]
    assert [s.label for s in builder.surfaces] == expected


@pytest.mark.parametrize("kind", ["side", "front"])
@pytest.mark.parametrize("motor", [False, True])
def test_a_rider_sits_in_front_of_the_machine_in_profile(kind: str, motor: bool) -> None:
    """Riders over their machines: where the rider and the machine overlap (legs over the
    frame or the engine), the rider is seen and labelled, also inside the wheel outline."""
    machine = constants.MOTORCYCLE if motor else constants.BICYCLE
    alone = _street_with([_two_wheeler(kind, motor, rider=False)], size=(128, 256))
    ridden = _street_with([_two_wheeler(kind, motor, rider=True)], size=(128, 256))
    covered = (alone.label_ids == machine) & (ridden.label_ids == constants.RIDER)
    assert covered.sum() >= 3, covered.sum()  # a few at least: bicycle frames are thin


@pytest.mark.parametrize(
    "kind, name",
    [("car", "car"), ("van", "car"), ("truck", "truck"), ("bus", "bus"), ("tram", "train")],
)
def test_each_vehicle_kind_has_its_class_and_one_instance(kind: str, name: str) -> None:
    """Vans are cars and trams trains (Cityscapes' classes); the end face, the flank (beside
    the camera axis) and a tram's pantograph are one object: one instance id."""
    builder = layout.Builder(np.random.default_rng(0), ss.DEFAULT_STYLE, None)  # type: ignore[arg-type]
    length = vehicles.add_vehicle(builder, kind, 4.0, 10.0, False)
    label = name2label[name].id
    assert len(builder.surfaces) >= 2  # the end face and the flank
    assert {(s.label, s.instance) for s in builder.surfaces} == {(label, label * 1000)}
    flank = next(s for s in builder.surfaces if s.facing == "side")
    assert flank.s1 - flank.s0 == pytest.approx(length)


def test_meta_describes_the_splits_and_shifted_copies(dataset: Path) -> None:
    """meta.json: generator version, seed and size, each split's images and cities, and
    for each shifted copy its kind, fog beta, split, images and folder."""
    meta = ss.read_meta(dataset)
    assert (meta["version"], meta["seed"], meta["size"]) == (ss.GENERATOR_VERSION, 3, [64, 128])
    assert meta["splits"] == {
        "train": {"images": 2, "cities": list(constants.CITIES["train"])},
        "val": {"images": 1, "cities": ["glenrock", "halden"]},
        "test": {"images": 3, "cities": ["ironbridge", "juniper"]},
    }
    for name in ("fog_0.005", "fog_0.01", "fog_0.02", "rain", "night", "newcity", "anomaly"):
        kind, beta = ("fog", float(name[4:])) if name.startswith("fog") else (name, None)
        assert meta["shifts"][name] == {
            "kind": kind,
            "beta": beta,
            "split": "test",
            "images": 3,
            "root": f"shifts/{name}",
        }
        assert (dataset / meta["shifts"][name]["root"] / "leftImg8bit" / "test").is_dir()
