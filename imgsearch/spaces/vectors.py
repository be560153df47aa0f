"""What the code space and its search structures share: codes at unit length, the angular distance,
the ANN_DIMS principal directions the approximate structures are built over, and the exact re-rank
of their CANDIDATES nearest on the full codes (which recovers what the projection blurs, docs/speed.md).

The code space (spaces/code.py) and every structure (spaces/annoy_index.py, faiss_index.py,
milvus.py) import this module; it imports neither.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import layout, tables
from ..pca import fit_pca
from .base import LoadInput, SpaceError

METRIC = "angular"  # cosine: the codes are trained with a cosine (InfoNCE) objective
ANN_DIMS = 64  # the unit codes' top 64 principal directions keep 94% of their variance at a million items
CANDIDATES = 50  # re-ranked on the full code: the exact top 50 in 64-d held the exact top 10 of 256-d (1M, docs/speed.md)
PROJECTION_FIT_ROWS = 50_000  # the directions of 50,000 codes are those of a million to within noise
SEED = 0  # the seed of every fitted or randomised part: the same inputs give byte-identical files
CHECKED_ITEMS = 8  # stored vectors compared with codes.npy when a structure loads


def unit_rows(codes: np.ndarray) -> np.ndarray:
    """Codes at unit length (float32): cosine is then a dot product, and angular distance sqrt(2 - 2 cos)."""
    codes = np.atleast_2d(np.asarray(codes, dtype=np.float32))
    return codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)


def angular(cos: np.ndarray) -> np.ndarray:
    """Annoy's angular distance from a cosine: sqrt(2 - 2 cos), the unit the code space reports."""
    return np.sqrt(np.maximum(2 - 2 * np.asarray(cos), 0)).astype(np.float32)


def fit_directions(codes: np.ndarray, dims: int = ANN_DIMS, seed: int = SEED) -> np.ndarray:
    """(code_dim, dims) top principal directions of the unit codes. No mean is kept: the structures
    compare differences of projections (Euclidean), which a shift leaves unchanged."""
    rows = np.arange(len(codes))
    if len(codes) > PROJECTION_FIT_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(len(codes), PROJECTION_FIT_ROWS, replace=False))
    return fit_pca(unit_rows(tables.gather(codes, rows)), dims).components


def project_codes(codes: np.ndarray, directions: np.ndarray, block: int = 65536) -> np.ndarray:
    """(N, dims) float32: the unit codes on `directions`, block by block (a million memory-mapped
    codes are never copied whole)."""
    out = np.empty((len(codes), directions.shape[1]), dtype=np.float32)
    for s, rows in tables.row_blocks(codes, block):
        out[s:s + len(rows)] = unit_rows(rows) @ directions
    return out


def rerank(codes: np.ndarray, rows: np.ndarray, unit_query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k of `rows` nearest to a unit-length query by exact angular distance on the full codes,
    ties to the smaller id."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: a memory map reads forward
    if len(rows) == 0:
        return rows, np.empty(0, dtype=np.float32)
    dists = angular(unit_rows(codes[rows]) @ unit_query)
    best = np.lexsort((rows, dists))[:k]
    return rows[best], dists[best]


def save_directions(directory: Path, directions: np.ndarray) -> None:
    np.save(directory / layout.ANNOY_DIRECTIONS, directions)


def load_directions(data: LoadInput, dims: int) -> np.ndarray:
    """code_ann_directions.npy, checked: the (code_dim, dims) projection a structure is built over."""
    try:
        directions = np.load(data.directory / layout.ANNOY_DIRECTIONS, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SpaceError(f"{layout.ANNOY_DIRECTIONS} is missing or corrupt ({type(e).__name__})") from None
    if directions.shape != (data.codes.shape[1], dims) or directions.dtype != np.float32:
        raise SpaceError(f"{layout.ANNOY_DIRECTIONS} does not project {data.codes.shape[1]}-d codes "
                         f"to the {dims} dimensions meta.json records")
    return directions


def checked_items(n: int) -> np.ndarray:
    """The few items, spread over 0 ... n - 1, whose stored vectors a load compares with codes.npy."""
    return np.linspace(0, n - 1, num=min(CHECKED_ITEMS, n)).astype(int)


def same_vector(stored: np.ndarray, expected: np.ndarray) -> bool:
    """A vector a structure stores against the one codes.npy gives: equal up to float32 rounding."""
    return bool(np.allclose(np.asarray(stored, dtype=np.float32), expected, rtol=1e-4, atol=1e-5))
