"""Distribution shifts of the SynthStreets test split: which copies exist and how the
photometric ones are made.

Every shift is written as its own Cityscapes-layout tree under `DIR/shifts/{name}/` (see
`segdistill.data.synthstreets`). Two families:

- photometric post-processes of the clean test image, using its depth map; scenes and labels
  are the clean ones (the gtFine files are copied):
  `fog_0.005`, `fog_0.01`, `fog_0.02` (the three Foggy Cityscapes attenuations), `rain`
  (streaks and veiling, after Rain Cityscapes), `night` (low light, headlights, sensor noise);
- re-rendered scenes, made by the generator itself: `newcity` (another style: palettes,
  textures, layouts and camera, the way A2D2 differs from Cityscapes; its own labels) and
  `anomaly` (the clean scenes plus objects of no known class on the road; their pixels are
  void in the labels and 1 in `{stem}_gtFine_anomaly.png`, see `anomaly_mask`).

The distance `d` in the optical models is the stored depth (along the optical axis, metres;
`inf` for sky), so each photometric copy can be recomputed from the clean image and depth
files alone. At the generator's field of view the Euclidean range is at most 14% larger,
at the image corners.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segdistill.data.labels import IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, VOID_LABEL_IDS
from segdistill.errors import DataError

SHIFT_KINDS = ("fog", "rain", "night", "newcity", "anomaly")
# Shifts that are post-processes of the clean test image; the others are re-rendered.
PHOTOMETRIC_KINDS = ("fog", "rain", "night")
# Attenuation coefficients of Foggy Cityscapes (Sakaridis et al. 2018), per metre.
FOG_BETAS = (0.005, 0.01, 0.02)
# Atmospheric light L of the fog model, as a fraction of white (a bright overcast grey).
FOG_AIRLIGHT = 0.8

# Heavy rain (after Rain Cityscapes, Hu et al. 2019): veiling attenuation per metre, how
# fast the streak layer builds up with distance, the streak layer's density and brightness,
# and the overcast darkening. The veil sits between the two heavier Foggy Cityscapes
# levels: like the fog copies, the one rain copy is the heavy end of its kind (generator 1.1;
# 1.0 drew a light rain, RAIN_BETA 0.008, density 0.006, darkening 0.8).
RAIN_BETA = 0.015
RAIN_STREAK_ALPHA = 0.05
RAIN_STREAK_DENSITY = 0.01
RAIN_STREAK_GAIN = 0.45
RAIN_DARKENING = 0.7
RAIN_AIRLIGHT = 0.65

# Night: exposure of the (linear) scene light, ego headlights, and the sensor at high gain.
NIGHT_EXPOSURE = (0.08, 0.16)
NIGHT_HEADLIGHT = 1.6
NIGHT_HEADLIGHT_RANGE = 12.0
NIGHT_SKY = np.array([0.010, 0.012, 0.025], dtype=np.float32)
NIGHT_SHOT_NOISE = 0.004
NIGHT_READ_NOISE = 0.008
GAMMA = 2.2

# Anomalies are labelled "dynamic" (void: moving things of no class, as animals are in
# Cityscapes); the mask marks them apart from the other void pixels.
ANOMALY_LABEL_ID = VOID_LABEL_IDS["dynamic"]
# Anomaly mask values.
ANOMALY = 1
IN_DISTRIBUTION = 0
VOID = 255


@dataclass(frozen=True)
class ShiftSpec:
    """One shifted copy of the test split.

    name: folder under `DIR/shifts/` ("fog_0.02", "rain", "night", "newcity", "anomaly").
    kind: one of SHIFT_KINDS.
    beta: fog attenuation per metre (fog only).
    """

    name: str
    kind: str
    beta: float | None = None

    @property
    def photometric(self) -> bool:
        """True when the copy is a post-process of the clean image (same labels)."""
        return self.kind in PHOTOMETRIC_KINDS


def fog_name(beta: float) -> str:
    """The name of a fog shift of attenuation `beta` ("fog_0.02"); Foggy Cityscapes' sets are
    evaluated under the same names."""
    return f"fog_{beta}"


def expand_shifts(kinds: Sequence[str]) -> list[ShiftSpec]:
    """Shift kinds as given on the command line -> the copies to write, in a fixed order.

    "fog" gives one copy per Foggy Cityscapes beta. Unknown kinds raise a DataError.
    """
    unknown = sorted(set(kinds) - set(SHIFT_KINDS))
    if unknown:
        raise DataError(
            f"unknown shift {', '.join(map(repr, unknown))}; choose from {', '.join(SHIFT_KINDS)}"
        )
    specs: list[ShiftSpec] = []
    for kind in SHIFT_KINDS:  # fixed order, whatever order the user typed
        if kind not in kinds:
            continue
        if kind == "fog":
            specs.extend(ShiftSpec(fog_name(beta), "fog", beta) for beta in FOG_BETAS)
        else:
            specs.append(ShiftSpec(kind, kind))
    return specs


def _to_float(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def transmission(depth: np.ndarray, beta: float) -> np.ndarray:
    """[H, W] t = exp(-beta d) for depth in metres (inf, the sky, gives 0)."""
    return np.exp(-beta * depth).astype(np.float32)


def fog(
    image: np.ndarray, depth: np.ndarray, beta: float, airlight: float = FOG_AIRLIGHT
) -> np.ndarray:
    """Koschmieder fog as in Foggy Cityscapes: I = R t + L (1 - t), t = exp(-beta d).

    image: [H, W, 3] uint8 clean image R; depth: [H, W] metres (inf for sky).
    Returns [H, W, 3] uint8.
    """
    t = transmission(depth, beta)[..., None]
    return _to_uint8(_to_float(image) * t + airlight * (1.0 - t))


def _streak_layer(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """[H, W] rain streaks in [0, 1]: sparse drops smeared along one slanted direction.

    Streak length scales with the image height so the look does not depend on resolution.
    """
    height, width = shape
    drops = (rng.random(shape) < RAIN_STREAK_DENSITY) * rng.uniform(0.3, 1.0, shape)
    length = max(3, round(0.07 * height))
    slant = rng.uniform(-0.35, 0.35)  # horizontal pixels per vertical pixel
    streaks = np.zeros(shape, dtype=np.float32)
    for step in range(length):  # a motion-blur line kernel, as shifted copies
        streaks += np.roll(drops, (step, round(step * slant)), axis=(0, 1))
    # Streaks one pixel wide would vanish in large images; widen them with the width.
    for step in range(1, width // 512 + 1):
        streaks = np.maximum(streaks, np.roll(streaks, step, axis=1))
    return np.clip(streaks, 0.0, 1.0)


def rain(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rain after Rain Cityscapes (Hu et al. 2019): I = R (1 - S - A) + g S + L A.

    A = 1 - exp(-RAIN_BETA d) is the veiling (rain accumulation, fog-like); S is the streak
    layer, weighted by 1 - exp(-RAIN_STREAK_ALPHA d) because a streak can only be seen in
    front of the surface behind it (near surfaces have little rain in front of them). The
    clean image R is first darkened (overcast). image: [H, W, 3] uint8; depth: [H, W] m.
    """
    veil = 1.0 - transmission(depth, RAIN_BETA)
    volume = 1.0 - transmission(depth, RAIN_STREAK_ALPHA)
    streaks = RAIN_STREAK_GAIN * _streak_layer(depth.shape, rng) * volume
    veil, streaks = veil[..., None], streaks[..., None]
    clean = RAIN_DARKENING * _to_float(image)
    return _to_uint8(clean * (1.0 - streaks - veil) + streaks + RAIN_AIRLIGHT * veil)


def _headlight_beam(shape: tuple[int, int]) -> np.ndarray:
    """[H, W] relative light of the ego headlights: a low, forward cone."""
    height, width = shape
    cols = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    lateral = np.exp(-((cols / 0.3) ** 2))
    vertical = np.clip((rows - 0.35) / 0.2, 0.0, 1.0)  # dipped beams light the lower image
    return vertical[:, None] * lateral[None, :]


def night(image: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Night / low light: little ambient light, ego headlights falling off with distance,
    a dark sky, and the sensor at high gain (shot and read noise).

    Works on linear light (gamma 2.2). image: [H, W, 3] uint8; depth: [H, W] m (inf = sky).
    """
    linear = _to_float(image) ** GAMMA
    exposure = rng.uniform(*NIGHT_EXPOSURE)
    reach = 1.0 / (1.0 + (depth / NIGHT_HEADLIGHT_RANGE) ** 2)  # 0 for the sky
    light = exposure + NIGHT_HEADLIGHT * _headlight_beam(depth.shape) * reach
    lit = linear * light[..., None]
    sky = ~np.isfinite(depth)
    lit[sky] = NIGHT_SKY
    noise_std = np.sqrt(NIGHT_SHOT_NOISE * lit + NIGHT_READ_NOISE**2)
    noisy = lit + noise_std * rng.standard_normal(lit.shape).astype(np.float32)
    return _to_uint8(np.clip(noisy, 0.0, 1.0) ** (1.0 / GAMMA))


def apply_photometric(
    spec: ShiftSpec, image: np.ndarray, depth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The shifted image of a photometric spec. image: [H, W, 3] uint8; depth: [H, W] m."""
    if spec.kind == "fog":
        assert spec.beta is not None  # expand_shifts gives every fog spec its beta
        return fog(image, depth, spec.beta)
    if spec.kind == "rain":
        return rain(image, depth, rng)
    if spec.kind == "night":
        return night(image, depth, rng)
    raise ValueError(f"{spec.name} is not a photometric shift")


def anomaly_mask(label_ids: np.ndarray) -> np.ndarray:
    """[H, W] Cityscapes label ids -> [H, W] uint8 mask: ANOMALY where the label is
    ANOMALY_LABEL_ID, VOID on the other void labels, IN_DISTRIBUTION elsewhere."""
    void = LABEL_ID_TO_TRAIN_ID[label_ids] == IGNORE_INDEX
    mask = np.where(void, VOID, IN_DISTRIBUTION).astype(np.uint8)
    mask[label_ids == ANOMALY_LABEL_ID] = ANOMALY
    return mask
