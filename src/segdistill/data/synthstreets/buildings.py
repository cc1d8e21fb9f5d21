"""Buildings, walls, fences and vegetation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segdistill.data.synthstreets.constants import (
    BUILDING,
    FAR,
    FENCE,
    RGB,
    VEGETATION,
    WALL,
    Material,
    Shape,
)
from segdistill.data.synthstreets.layout import Builder, Lot
from segdistill.data.synthstreets.shapes import (
    blob,
    facade,
    jitter,
    leafy,
    pick,
    textured,
    whole,
)
from segdistill.data.synthstreets.textures import tex, tex_offset


def _add_building(b: Builder, x: float, z0: float, z1: float, side: int, height: float) -> None:
    """A block: its facade along the street at X = x, its front wall facing the camera."""
    wall = pick(b.rng, b.style.facades)
    material = facade(b.rng, b.style, wall)
    depth = b.rng.uniform(12, 25)
    x_back = x + side * depth
    b.side(x, (z0, z1), (0.0, height), BUILDING, material)
    b.front(z0, (min(x, x_back), max(x, x_back)), (0.0, height), BUILDING, material)
    b.shadow(x, x_back, z0, z1, 0.0, height)


# Free-standing walls: concrete, dark concrete, sandstone, brick. Brick and grey concrete
# are close to facade colours; the courses and the coping tell a wall from a facade.
_WALL_STONES: tuple[RGB, ...] = (
    (0.60, 0.59, 0.56),
    (0.40, 0.40, 0.39),
    (0.72, 0.64, 0.50),
    (0.52, 0.27, 0.20),
)


def _masonry(rgb: np.ndarray, rng: np.random.Generator, height: float) -> Material:
    """Material: blocks in staggered courses with lighter mortar joints, under a coping
    (a cap band of another shade) along the top."""
    offset = tex_offset(rng)
    course = rng.uniform(0.25, 0.6)
    block = course * rng.uniform(1.5, 3.0)
    mortar = np.clip(rgb * 1.35, 0, 1)
    coping = np.clip(rgb * rng.choice([0.6, 1.4]), 0, 1)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = rgb * (1.0 + 0.1 * tex(x, y, 12.0, offset))[:, None]
        row, fy = np.divmod(y / course, 1.0)
        fx = np.mod(x / block + 0.5 * (row % 2), 1.0)
        out[(fy < 0.12) | (fx < 0.06)] = mortar
        out[y > height - 0.15] = coping
        return out

    return material


def _add_wall(b: Builder, x: float, z0: float, z1: float, height: float) -> None:
    """A free-standing wall along the street: masonry courses and a coping, low."""
    material = _masonry(pick(b.rng, _WALL_STONES), b.rng, height)
    b.side(x, (z0, z1), (0.0, height), WALL, material)
    b.shadow(x, x, z0, z1, 0.0, height)


def _fence_shape(rng: np.random.Generator, height: float, scale: float) -> Shape:
    """Slats or a mesh with gaps, with top and bottom rails; bars `scale` times life size."""
    spacing = rng.uniform(0.1, 0.25) * scale
    bar = spacing * rng.uniform(0.25, 0.6)
    mesh = rng.random() < 0.3

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rails = (np.abs(y - height + 0.05) < 0.05) | (np.abs(y - 0.15) < 0.04)
        bars = (x % spacing) < bar
        if mesh:
            bars |= ((x + y) % spacing < bar * 0.5) | ((x - y) % spacing < bar * 0.5)
        posts = (x % 2.5) < 0.08
        return rails | bars | posts

    return shape


def _add_fence(b: Builder, x: float, z0: float, z1: float, height: float) -> None:
    rgb = pick(b.rng, ((0.35, 0.35, 0.35), (0.18, 0.28, 0.20), (0.45, 0.34, 0.24), (0.6,) * 3))
    material = textured(rgb, b.rng, 0.08, 20.0)
    b.side(
        x,
        (z0, z1),
        (0.0, height),
        FENCE,
        material,
        _fence_shape(b.rng, height, b.style.object_scale),
        outline=whole,
    )


def _add_hedge(b: Builder, x: float, z0: float, z1: float, height: float) -> None:
    material = leafy(pick(b.rng, b.style.foliage), b.rng)
    offset = tex_offset(b.rng)

    def shape(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return ys < height * (0.85 + 0.15 * tex(xs, ys * 0, 3.0, offset))

    b.side(x, (z0, z1), (0.0, height), VEGETATION, material, shape)
    b.shadow(x, x, z0, z1, 0.0, height)


def _crown_shape(blobs: Sequence[tuple[float, float, float]], rng: np.random.Generator) -> Shape:
    """A tree crown: overlapping discs (cx, cy, r in local metres) with ragged rims."""
    offset = tex_offset(rng)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        shrink = 1.0 - 0.35 * (0.5 + 0.5 * tex(x, y, 12.0, offset))
        inside = np.zeros(x.shape, dtype=bool)
        for cx, cy, r in blobs:
            inside |= (x - cx) ** 2 + (y - cy) ** 2 <= r * r * shrink
        return inside

    return shape


def _crown_material(rgb: np.ndarray, rng: np.random.Generator, base: float, top: float) -> Material:
    """Foliage that is darker low in the crown (heights base..top), where it shades itself."""
    foliage = leafy(rgb, rng)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return foliage(x, y) * (0.7 + 0.45 * np.clip((y - base) / (top - base), 0, 1))[:, None]

    return material


def _tree_material(trunk: np.ndarray, crown: Material, radius: float, trunk_top: float) -> Material:
    """Bark on the trunk (the centre column, below the crown), foliage elsewhere."""
    half = max(0.075, radius * 0.06)

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = crown(x, y)
        bark = (np.abs(x - 1.5 * radius) < half) & (y < trunk_top)
        out[bark] = trunk
        return out

    return material


def add_tree(b: Builder, x: float, z: float, height: float, radius: float) -> None:
    """A tree as one surface: a trunk and a crown of overlapping ragged blobs (vegetation).

    Local box: 3 radii across (trunk in the middle), from the ground to the crown top.
    """
    rng = b.rng
    crown_base = height - 2 * radius
    trunk_top = crown_base + 0.3 * radius
    blobs = [
        (
            1.5 * radius * (1 + rng.uniform(-0.45, 0.45)),
            crown_base + radius * rng.uniform(0.7, 1.3),
            radius * rng.uniform(0.55, 0.8),
        )
        for _ in range(int(rng.integers(3, 6)))
    ]
    half = max(0.075, radius * 0.06)
    crown = _crown_shape(blobs, rng)
    crown_low = min(cy - r for _, cy, r in blobs)

    def shape(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        inside = (np.abs(xs - 1.5 * radius) < half) & (ys < trunk_top)
        up = ys >= crown_low  # the crown test only where a crown can be
        inside[up] |= crown(xs[up], ys[up])
        return inside

    top = crown_base + 2.2 * radius
    foliage = _crown_material(pick(rng, b.style.foliage), rng, crown_base, top)
    material = _tree_material(jitter(rng, (0.30, 0.24, 0.18)), foliage, radius, trunk_top)
    b.front(z, (x - 1.5 * radius, x + 1.5 * radius), (0.0, top), VEGETATION, material, shape)
    b.shadow(x - radius, x + radius, z - radius, z + radius, crown_base, height, round=True)


def _add_bush(b: Builder, x: float, z: float) -> None:
    w, h = b.rng.uniform(0.8, 2.5), b.rng.uniform(0.5, 1.4)
    b.front(
        z,
        (x - w / 2, x + w / 2),
        (-0.1, h),
        VEGETATION,
        leafy(pick(b.rng, b.style.foliage), b.rng),
        blob(w, 2 * (h + 0.1), b.rng, 0.3),
    )


def _add_park(b: Builder, lot: Lot, edge: float, side: int) -> None:
    """Grass (the ground), trees and bushes, a boundary along the sidewalk, and buildings
    far behind."""
    rng = b.rng
    weights = np.array([0.35, 0.3 * b.style.crowd, 0.2 * b.style.crowd, 0.15])
    boundary = rng.choice(["hedge", "fence", "wall", "none"], p=weights / weights.sum())
    if boundary == "hedge":
        _add_hedge(b, edge, lot.z0, lot.z1, rng.uniform(0.8, 1.8))
    elif boundary == "fence":
        _add_fence(b, edge, lot.z0, lot.z1, rng.uniform(1.0, 2.0))
    elif boundary == "wall":
        _add_wall(b, edge, lot.z0, lot.z1, rng.uniform(0.6, 2.2))
    for _ in range(int(rng.integers(1, 5))):
        add_tree(
            b,
            edge + side * rng.uniform(2, 15),
            rng.uniform(lot.z0, lot.z1),
            rng.uniform(6, 14),
            rng.uniform(1.8, 3.5),
        )
    for _ in range(int(rng.integers(0, 4))):
        _add_bush(b, edge + side * rng.uniform(1, 10), rng.uniform(lot.z0, lot.z1))
    x_far = edge + side * rng.uniform(25, 45)
    _add_building(b, x_far, lot.z0, lot.z1, side, rng.uniform(8, 30))


def add_lots(b: Builder, lots: Sequence[Lot], edge: float, side: int) -> None:
    """Fill one side of the street: buildings (with gaps holding a wall or fence), parks."""
    rng = b.rng
    for lot in lots:
        if lot.kind == "park":
            _add_park(b, lot, edge, side)
        elif lot.kind == "building":
            setback = rng.uniform(0, 1.5) if rng.random() < 0.4 else 0.0
            walled = rng.random() < 0.25 * b.style.crowd
            length = lot.z1 - lot.z0
            gap = (
                min(rng.uniform(2, 6) * b.style.crowd, length - 6) if walled and length > 10 else 0
            )
            height = rng.uniform(*b.style.building_height)
            _add_building(b, edge + side * setback, lot.z0, lot.z1 - gap, side, height)
            if gap:
                low = rng.uniform(1.0, 2.5)
                add = _add_wall if rng.random() < 0.5 else _add_fence
                add(b, edge, lot.z1 - gap, lot.z1, low)
        elif lot.z0 < FAR - 1:  # a cross street: the next block's corner faces the camera
            _add_building(
                b,
                edge + side * rng.uniform(0, 3),
                lot.z1,
                lot.z1 + 15,
                side,
                rng.uniform(*b.style.building_height),
            )


def add_street_end(b: Builder, z_end: float) -> None:
    """Where the street ends: a row of buildings across (T-junction), or a tree line and
    the skyline far away."""
    rng = b.rng
    if rng.random() < 0.5:
        x = -80.0
        while x < 80:
            w = rng.uniform(10, 30)
            height = rng.uniform(*b.style.building_height)
            z = z_end + 12 + rng.uniform(0, 6)
            b.front(
                z,
                (x, x + w),
                (0.0, height),
                BUILDING,
                facade(rng, b.style, pick(rng, b.style.facades)),
            )
            x += w
    for _ in range(int(rng.integers(3, 9))):
        add_tree(
            b,
            rng.uniform(-60, 60),
            z_end + rng.uniform(20, 60),
            rng.uniform(8, 15),
            rng.uniform(3, 5),
        )
    _add_skyline(b)


def _add_skyline(b: Builder) -> None:
    """Distant blocks along the horizon as one surface; the haze turns them pale."""
    rng = b.rng
    widths = rng.uniform(15, 60, 40)
    edges = np.cumsum(widths) - 400.0  # right edges of the blocks, from X = -400
    heights = np.where(rng.random(40) < 0.7, rng.uniform(10, 70, 40), 0.0).astype(np.float32)
    colors = np.stack([pick(rng, b.style.facades) for _ in range(40)])
    offset = tex_offset(rng)

    def block(x: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(edges, x - 400.0), 39)

    def shape(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y < heights[block(x)]

    def material(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return colors[block(x)] * (1.0 + 0.1 * tex(x, y, 2.0, offset))[:, None]

    b.front(450.0, (-400.0, 400.0), (0.0, 70.0), BUILDING, material, shape)
