"""Textures: one fixed, tileable noise table sampled at surface coordinates."""

from __future__ import annotations

import functools

import numpy as np
from scipy.ndimage import uniform_filter

_TEX = 256  # noise table size (texels)
_TEX_ORIGIN = 65536.0  # keeps texel coordinates positive for any world position


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """[256, 256] float32 tileable fractal noise, zero mean, unit std.

    Fixed (its own seed), so textures never depend on the process; images vary by the
    random offset and scale at which they sample it.
    """
    rng = np.random.default_rng(20240229)
    table = np.zeros((_TEX, _TEX))
    for cells, weight in ((8, 1.0), (16, 0.7), (32, 0.5), (64, 0.35), (128, 0.25), (256, 0.2)):
        rep = _TEX // cells
        grid = np.kron(rng.standard_normal((cells, cells)), np.ones((rep, rep)))
        # Smooth the blocks twice so each octave is a field of bumps, not squares.
        table += weight * uniform_filter(uniform_filter(grid, rep, mode="wrap"), rep, mode="wrap")
    return ((table - table.mean()) / table.std()).astype(np.float32)


def tex_offset(rng: np.random.Generator) -> tuple[float, float]:
    """A random texture origin (texels)."""
    u, v = rng.uniform(0, _TEX, 2)
    return float(u) + _TEX_ORIGIN, float(v) + _TEX_ORIGIN


def tex(x: np.ndarray, y: np.ndarray, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """Noise at coordinates x, y (metres, same shape) with `scale` texels per metre."""
    i = (x * scale + offset[0]).astype(np.int32) & (_TEX - 1)
    j = (y * scale + offset[1]).astype(np.int32) & (_TEX - 1)
    return _noise_table().ravel()[(j << 8) | i]  # one flat lookup (_TEX = 256)


def cell_noise(i: np.ndarray, j: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """One noise value per integer cell (i, j): window panes, paving tiles."""
    row = (j * 37 + int(offset[1])) & (_TEX - 1)
    return _noise_table().ravel()[(row << 8) | ((i * 23 + int(offset[0])) & (_TEX - 1))]
