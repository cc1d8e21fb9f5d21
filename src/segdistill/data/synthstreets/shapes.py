"""Shapes and materials: closures over their parameters, local metres in, arrays out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segdistill.data.synthstreets.constants import RGB, Material, Shape
from segdistill.data.synthstreets.styles import Style
from segdistill.data.synthstreets.textures import cell_noise, tex, tex_offset


def color(rgb: Sequence[float]) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 0.06) -> np.ndarray:
    """A colour varied a little in brightness and tint, so no two objects are identical."""
    brightness, *tint = rng.uniform(-1.0, 1.0, 4).tolist()  # python floats: fast scalars
    gain = 1 + 1.5 * amount * brightness
    varied = [float(c) * gain + amount * t for c, t in zip(rgb, tint)]
    return np.array([min(max(c, 0.02), 0.98) for c in varied], dtype=np.float32)


def pick(rng: np.random.Generator, palette: Sequence[RGB], amount: float = 0.05) -> np.ndarray:
    return jitter(rng, palette[int(rng.integers(len(palette)))], amount)


def textured(
    rgb: np.ndarray, rng: np.random.Generator, amp: float = 0.08, scale: float = 25.0
) -> Material:
    """Material: a colour with fractal brightness noise."""
    offset = tex_offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return rgb * (1.0 + amp * tex(x, y, scale, offset))[:, None]

    return material


def leafy(rgb: np.ndarray, rng: np.random.Generator) -> Material:
    """Material: foliage, bright and dark clumps at two scales."""
    offset = tex_offset(rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        clumps = 0.2 * tex(x, y, 6.0, offset) + 0.22 * tex(x, y, 40.0, offset)
        return rgb * np.clip(1.0 + clumps, 0.4, 1.6)[:, None]

    return material


def facade(rng: np.random.Generator, style: Style, wall: np.ndarray) -> Material:
    """Material: a building wall with a grid of windows above a ground floor of shop
    windows and doors; panes vary (reflections, curtains, lights)."""
    offset = tex_offset(rng)
    floor = rng.uniform(*style.floor_height)
    bay = rng.uniform(2.2, 4.0)
    win_w, win_h = rng.uniform(0.35, 0.6), rng.uniform(0.4, 0.6)
    glass = jitter(rng, style.window, 0.04)
    frame = wall * rng.uniform(0.75, 1.2)
    shop = rng.random() < 0.5

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = wall * (1.0 + 0.07 * tex(x, y, 20.0, offset))[:, None]
        column, fx = np.divmod(x / bay, 1.0)
        storey, fy = np.divmod(y / floor, 1.0)
        across = np.abs(fx - 0.5)
        upper = storey >= 1
        sill = upper & (across < win_w / 2 + 0.04) & (np.abs(fy - 0.5 + win_h / 2) < 0.03)
        out[sill] = frame
        window = upper & (across < win_w / 2) & (np.abs(fy - 0.5) < win_h / 2)
        pane = cell_noise(column[window].astype(np.int32), storey[window].astype(np.int32), offset)
        out[window] = glass * (1.0 + 0.35 * np.clip(pane, -1.5, 2.5))[:, None]
        if shop:
            out[~upper & (fy < 0.8) & (y > 0.4) & (across < 0.42)] = glass * 0.8
        return out

    return material


def blob(w: float, h: float, rng: np.random.Generator, rough: float = 0.35) -> Shape:
    """An ellipse with a ragged, noisy rim (crowns, bushes, debris)."""
    offset = tex_offset(rng)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r2 = (2 * x / w - 1) ** 2 + (2 * y / h - 1) ** 2
        return r2 <= 1.0 - rough * (0.5 + 0.5 * tex(x, y, 12.0, offset))

    return shape


def segments_distance2(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] squared distance from points (x, y) to the segment a-b (2-vectors)."""
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2


def capsules(parts: Sequence[tuple[tuple[float, float], tuple[float, float], float]]) -> Shape:
    """A union of capsules (thick segments): ((x0, y0), (x1, y1), radius) in metres."""
    arrays = [(np.asarray(a, np.float32), np.asarray(b, np.float32), r) for a, b, r in parts]

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, dtype=bool)
        for a, b, r in arrays:
            inside |= segments_distance2(x, y, a, b) <= r * r
        return inside

    return shape


def rings(centres: Sequence[tuple[float, float]], radius: float, width: float) -> Shape:
    """Wheels as rings (tyres) of outer `radius` and rim `width`, plus a small hub."""

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, dtype=bool)
        for cx, cy in centres:
            r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            inside |= (np.abs(r - radius + width / 2) <= width / 2) | (r <= 0.06)
        return inside

    return shape


def discs(centres: Sequence[tuple[float, float]], radius: float) -> Shape:
    """Filled wheels: what an outline around a wheel covers, spokes and gaps included."""
    return rings(centres, radius, 2 * radius)


def whole(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The whole rectangle of a surface (an outline without holes)."""
    return np.ones(x.shape, dtype=bool)


def union(*shapes: Shape) -> Shape:
    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = shapes[0](x, y)
        for other in shapes[1:]:
            inside |= other(x, y)
        return inside

    return shape


def mirrored(shape: Shape, length: float) -> Shape:
    """The same outline facing the other way along x."""
    return lambda x, y: shape(length - x, y)


def mirrored_material(material: Material, length: float) -> Material:
    """The same material facing the other way along x (goes with `mirrored`)."""
    return lambda x, y: material(length - x, y)
