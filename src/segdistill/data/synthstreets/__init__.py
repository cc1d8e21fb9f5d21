"""SynthStreets: procedural driving scenes written in the Cityscapes layout.

A level pinhole camera looks along +Z over the ground plane Y = 0 (X right, Y up, metres),
so every pixel has a metric depth. A scene is a street (road, sidewalks, lots with
buildings or parks, cross streets) plus vertical planar patches ("surfaces") that face the
camera (constant Z) or the street (constant X): facades, walls, fences, poles, lights,
signs, trees, people, riders and vehicles. Rendering is numpy only: a 2x supersampled
depth-tested pass (each surface drawn inside its image bounding box), then 2x2 box
averaging for the image (anti-aliased boundaries) and the 2x2 majority sample for labels,
instances and depth. Lighting (sun, ambient, cast shadows on the ground, aerial haze) and a
sensor model (exposure, vignetting, shot and read noise) vary per image.

Layout written by `generate(root, SynthConfig(...))`:

    DIR/meta.json                                   written last: no meta.json = incomplete
    DIR/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png          RGB uint8
    DIR/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png          Cityscapes label ids, uint8
    DIR/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png     train ids 0..18, 255 void
    DIR/gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png       uint16: id*1000+k for
                                                   instance classes, the label id elsewhere
    DIR/gtFine/{split}/{city}/{stem}_depth.png     uint16 depth along the optical axis in
                                                   centimetres; 0 = sky (no finite depth)
    DIR/shifts/{shift}/leftImg8bit/test/...        the test split under a shift, same names
    DIR/shifts/{shift}/gtFine/test/...             its labels and depth (for fog_*, rain and
                                                   night hard links to the clean files)
    DIR/shifts/anomaly/gtFine/test/{city}/{stem}_gtFine_anomaly.png
                                                   uint8: 1 anomaly, 0 in-distribution, 255
                                                   other void (ego hood, out of ROI, clutter)

with `stem = {city}_{seq:06d}_{frame:06d}`, frame 000019 (Cityscapes annotates the 20th
frame of each snippet) and seq the index of the image within its city. Splits use disjoint
cities (`CITIES`). Shifts: `fog_0.005`, `fog_0.01`, `fog_0.02`, `rain`, `night`, `newcity`,
`anomaly` (see `segdistill.data.shifts`).

Determinism: every image draws from its own generator seeded by (seed, split, index) (and
the shift name for shift noise), so the same seed and GENERATOR_VERSION give byte-identical
files whatever the number of worker processes.

Modules, in the order they build on one another:

    constants   version, splits, cities, sizes, the Cityscapes label ids drawn
    styles      what makes a city look like itself (`DEFAULT_STYLE`, `NEWCITY_STYLE`)
    textures    the tileable noise table surfaces sample
    scene       the scene description (camera, lighting, sky, street, surfaces, casters)
    shapes      outlines and materials of surfaces
    layout      the `Builder` objects are added through; camera, lanes, lots, street
    buildings, furniture, people, vehicles   the objects of a street
    sampling    a whole scene (`sample_scene`)
    anomalies   objects that never occur in training, pasted into test scenes
    render      a scene into image, labels, instances and depth (`render`)
    files       file names, reading and writing, `generate`
    check       `check_dataset`
"""

from segdistill.data.synthstreets.anomalies import add_anomalies
from segdistill.data.synthstreets.check import (
    NOT_SYNTHSTREETS,
    GroupReport,
    check_dataset,
    not_a_data_set,
)
from segdistill.data.synthstreets.constants import GENERATOR_VERSION, SPLITS
from segdistill.data.synthstreets.files import (
    INTERIOR_RADIUS,
    META_FILE,
    PARTIAL_FILE,
    SHIFTS_DIR,
    SamplePaths,
    SynthConfig,
    decode_depth,
    encode_depth,
    generate,
    image_name,
    image_rng,
    interior_counts,
    read_depth,
    read_meta,
    read_png,
    shift_root,
)
from segdistill.data.synthstreets.render import Frame, render
from segdistill.data.synthstreets.sampling import sample_scene
from segdistill.data.synthstreets.styles import DEFAULT_STYLE, NEWCITY_STYLE, Style

# The generator's user-facing names; the modules hold the rest (public names there are
# shared between modules, not part of this API).
__all__ = [
    "DEFAULT_STYLE",
    "GENERATOR_VERSION",
    "INTERIOR_RADIUS",
    "META_FILE",
    "NEWCITY_STYLE",
    "NOT_SYNTHSTREETS",
    "not_a_data_set",
    "PARTIAL_FILE",
    "SHIFTS_DIR",
    "SPLITS",
    "Frame",
    "GroupReport",
    "SamplePaths",
    "Style",
    "SynthConfig",
    "add_anomalies",
    "check_dataset",
    "decode_depth",
    "encode_depth",
    "generate",
    "image_name",
    "image_rng",
    "interior_counts",
    "read_depth",
    "read_meta",
    "read_png",
    "render",
    "sample_scene",
    "shift_root",
]
