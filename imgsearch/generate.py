"""The decoder as a generator: images decoded from codes that no image of the collection has.

Between two images: the codes on the way from one to the other, decoded. The codes are compared
by angle (the code space is angular), so the way follows the great circle between their
directions (spherical interpolation, slerp) while their length, which the decoder also reads,
changes linearly from one to the other. Each step comes with the nearest real item in code space.

What a code direction means: a class's mean code, and that code moved one and two standard
deviations along the top principal directions of the collection's codes, decoded as a grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from . import tables
from .model import ConvAutoEncoder, decode_codes
from .pca import fit_pca

STEPS = 8
MAX_STEPS = 64  # a strip wider than this shows nothing more, and each step is a decode and a search
DIRECTIONS = 3  # the top principal directions of code space shown in the grid
SPREADS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # positions along each direction, in its standard deviations
PCA_FIT_ROWS = 20_000  # the codes' top directions from a seeded sample: those of the whole collection within noise
STRIP_SCALE = 4  # a 32x32 step drawn 128x128, each pixel a crisp square


def slerp(a: np.ndarray, b: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """(steps, D) float32 codes from a to b, both ends included: the direction turns at an even angle per
    step along the great circle through a's and b's directions; the length goes linearly from |a| to |b|.

    Computed in float64, so the ends are a and b to within float32 rounding."""
    if not 2 <= steps <= MAX_STEPS:
        raise ValueError(f"The number of steps must be between 2 and {MAX_STEPS}, not {steps}.")
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise ValueError("A code of length zero has no direction to interpolate from.")
    ua, ub = a / na, b / nb
    angle = float(np.arccos(np.clip(ua @ ub, -1.0, 1.0)))
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if np.sin(angle) < 1e-9:
        if ua @ ub < 0:
            raise ValueError("The two codes point in exactly opposite directions: no single way leads between them.")
        directions = np.repeat(ua[None], steps, axis=0)  # one direction: only the length changes
    else:
        directions = (np.sin((1 - t) * angle) * ua + np.sin(t * angle) * ub) / np.sin(angle)
    return ((1 - t) * na + t * nb) * directions


@dataclass
class Interpolation:
    codes: np.ndarray  # (steps, D) float32: slerp's codes, from a's to b's
    pixels: np.ndarray  # (steps, 32, 32, 3) uint8: each code decoded
    nearest: np.ndarray  # (steps,) int64: the item whose code is nearest each step's (code space)
    distances: np.ndarray  # (steps,) float32: their angular distances


def interpolate(model: ConvAutoEncoder, a: np.ndarray, b: np.ndarray, steps: int,
                nearest: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Interpolation:
    """Decode the codes between codes a and b; `nearest(codes)` -> (ids, distances) of the nearest items."""
    codes = slerp(a, b, steps).astype(np.float32)
    ids, distances = nearest(codes)
    return Interpolation(codes, decode_codes(model, codes), np.asarray(ids, np.int64), np.asarray(distances, np.float32))


@dataclass
class DirectionGrid:
    codes: np.ndarray  # (directions, spreads, D) float32: the mean code moved along each direction
    pixels: np.ndarray  # (directions, spreads, 32, 32, 3) uint8: those codes decoded
    spreads: tuple[float, ...]  # the grid's columns, in standard deviations (0: the mean code itself)
    explained: np.ndarray  # (directions,) the share of the codes' variance along each direction


def direction_codes(codes: np.ndarray, members: np.ndarray, directions: int = DIRECTIONS,
                    spreads=SPREADS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(directions, spreads, D) float32 codes: the mean of the codes of `members` (item ids) moved `spread`
    standard deviations of the collection's codes along each of their top principal directions; and each
    direction's share of the codes' variance. A direction's sign is fixed (its largest coordinate positive),
    so every machine draws the same grid."""
    if not len(members):
        raise ValueError("There are no items to take the mean code of.")
    pca = fit_pca(codes, directions, max_rows=PCA_FIT_ROWS, seed=seed)
    components = pca.components * np.sign(pca.components[np.abs(pca.components).argmax(0), np.arange(pca.n_components)])
    mean = mean_row(codes, members)
    steps = np.asarray(spreads, np.float64)[None, :, None] * np.sqrt(pca.variance.astype(np.float64))[:, None, None]
    moved = mean + steps * components.T.astype(np.float64)[:, None, :]
    return moved.astype(np.float32), pca.variance / pca.total_variance


def mean_row(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The mean of some rows of a (memory-mapped) table, in float64, a block at a time: a class of a
    million-item index is never copied whole."""
    rows = np.sort(rows)
    total = np.zeros(table.shape[1])
    for s in range(0, len(rows), tables.BLOCK_ROWS):
        total += tables.gather(table, rows[s:s + tables.BLOCK_ROWS]).astype(np.float64).sum(0)
    return total / len(rows)


def direction_grid(model: ConvAutoEncoder, codes: np.ndarray, members: np.ndarray, directions: int = DIRECTIONS,
                   spreads=SPREADS) -> DirectionGrid:
    """direction_codes, decoded: what moving along each of code space's main directions does to an image."""
    moved, explained = direction_codes(codes, members, directions, spreads)
    pixels = decode_codes(model, moved.reshape(-1, moved.shape[-1])).reshape(*moved.shape[:2], 32, 32, 3)
    return DirectionGrid(moved, pixels, tuple(spreads), explained)


def strip(rows: list[np.ndarray], scale: int = STRIP_SCALE) -> Image.Image:
    """Rows of images (each (n, H, W, 3) uint8) side by side, the rows one beneath another, each pixel a
    `scale` x `scale` square: (rows * H * scale) x (n * W * scale)."""
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    image = Image.fromarray(np.ascontiguousarray(grid))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
