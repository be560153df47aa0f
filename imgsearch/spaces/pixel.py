"""Pixel space: exact Euclidean distance between 32x32x3 images, pixels scaled to [0, 1].

Exact search must consider every image, but it need not read every image. Split x and the query
q into their coordinates y in a PCA subspace and the rest, of length r; then

    ||q - x||^2 = ||y_q - y_x||^2 + ||rest_q - rest_x||^2  >=  ||y_q - y_x||^2 + (r_q - r_x)^2

a lower bound that costs one dot product of m + 1 floats. The search ranks every item by the
bound in a 32-d subspace (128 bytes per item instead of 3,072), measures the best few exactly
to learn how far the k-th neighbour is at most, tightens the bound of the items that remain in
256 dimensions, and measures exactly (integer arithmetic on the uint8 pixels) only the items
whose bound still beats the k-th distance. The answer is brute force's, ties broken by id; the
work is a memory-light scan and a few dozen exact distances, whatever BLAS the machine has.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import layout, tables
from ..tables import NpzWriter
from .base import BuildInput, LoadInput, Query, Space, SpaceError, check_rows, load_npz, projection_blocks

COARSE_DIMS = 32  # the full scan's subspace: 132 bytes per item; the finer one, the pixel PCA's 256 dimensions,
#                  is read only for candidates (~25 of 50,000 CIFAR-10 images are left to measure exactly)
FIRST_CHECK = 64  # candidates measured exactly before the pruning threshold is known
SLACK = 1e-4  # float32 rounding allowance: bounds are lowered by this share of ||x||^2 + ||q||^2


class PixelSpace(Space):
    name = "pixel"
    title = "Pixel space"
    description = "raw pixels: exact Euclidean distance between the 32×32 images"
    metric = "euclidean on 32x32x3 pixels scaled to [0, 1]"

    def __init__(self, pixels: np.ndarray, mean: np.ndarray, basis: np.ndarray, coarse_dims: int,
                 coarse: np.ndarray, fine: np.ndarray, totals: np.ndarray):
        self.pixels = pixels.reshape(len(pixels), -1)  # (N, 3072) uint8
        self.mean, self.basis, self.coarse_dims = mean, basis, coarse_dims  # (3072,), (3072, fine dims)
        self.coarse = coarse  # (N, coarse dims + 1) float32: [y, r] in the coarse subspace
        self.fine = fine  # (N, fine dims + 1) float32: [y, r] in the fine subspace
        self.totals = totals  # (N,) float32: ||x - mean||^2 (1 - SLACK)

    @classmethod
    def build(cls, data: BuildInput, directory: Path) -> dict:
        reuse = data.previous and data.previous.usable_section(cls.name, len(data.pixels))
        if reuse:  # an update: the previous subspace, its kept rows, and bounds for the new rows only
            old = data.previous.load_npz(layout.PIXEL_BOUND, ("mean", "basis", "coarse_dims", "coarse", "fine", "totals"))
            mean, basis, coarse_dims = old["mean"], old["basis"], int(old["coarse_dims"])
            blocks = data.previous.carried((old["coarse"], old["fine"], old["totals"]),
                                           bound_blocks(data.pixels[data.previous.kept:], mean, basis, coarse_dims))
        else:  # the fine subspace is the whole pixel PCA: its projection is shared with the pca space and the map
            pca = data.pixel_pca
            mean, basis = pca.mean, pca.components
            coarse_dims = min(COARSE_DIMS, pca.n_components)
            projected, totals = data.pixel_projection
            blocks = (bounds(y, t, coarse_dims) for (_, y), (_, t) in
                      zip(tables.row_blocks(projected), tables.row_blocks(totals)))
        n = len(data.pixels)
        # The fine table (1 GB at a million items) goes to disk block by block; the coarse one and the
        # totals (an eighth of that) are gathered on the way and written after it.
        coarse, totals = np.empty((n, coarse_dims + 1), dtype=np.float32), np.empty(n, dtype=np.float32)

        def fine_blocks():
            s = 0
            for c, f, t in blocks:
                coarse[s:s + len(c)], totals[s:s + len(c)] = c, t
                s += len(c)
                yield f
        with NpzWriter(directory / layout.PIXEL_BOUND) as npz:
            npz.add_rows("fine", (n, basis.shape[1] + 1), np.float32, fine_blocks())
            for key, array in (("coarse", coarse), ("totals", totals), ("mean", mean), ("basis", basis),
                               ("coarse_dims", np.int64(coarse_dims))):
                npz.add(key, array)
        return {"metric": cls.metric, "dims": int(data.pixels[0].size), "files": [layout.PIXELS, layout.PIXEL_BOUND],
                "settings": {"search": "exact: PCA lower bounds prune, exact distances decide",
                             "coarse_dims": coarse_dims, "fine_dims": int(basis.shape[1]),
                             **({"fitted_in": data.previous.fitted_in(reuse)} if reuse else {})}}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "PixelSpace":
        a = load_npz(data, layout.PIXEL_BOUND, ("mean", "basis", "coarse_dims", "coarse", "fine", "totals"))
        for key in ("coarse", "fine", "totals"):
            check_rows(layout.PIXEL_BOUND, a[key], data.items)
        d, fine_dims = a["basis"].shape
        c = int(a["coarse_dims"])
        if d != data.pixels[0].size or a["fine"].shape[1] != fine_dims + 1 or a["coarse"].shape[1] != c + 1:
            raise SpaceError(f"{layout.PIXEL_BOUND} does not fit images of {data.pixels[0].size} values")
        return cls(data.pixels, a["mean"], a["basis"], c, a["coarse"], a["fine"], a["totals"])

    def embed(self, query: Query) -> np.ndarray:
        return query.pixels

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return pixels

    filters_exactly = True

    def search(self, vector: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`rows`: sorted ids of the only items considered (a filter); their bounds alone are computed."""
        q = np.asarray(vector, dtype=np.uint8).reshape(-1)
        q_coarse, q_fine, q_total = self._query_rows(q)
        coarse, totals = (self.coarse, self.totals) if rows is None else (self.coarse[rows], self.totals[rows])
        item = (lambda pos: pos) if rows is None else (lambda pos: rows[pos])  # position in the scan -> item id
        # einsum, not BLAS: one thread, no thread pool to wake, the same speed on every machine
        bound = totals + q_total - 2.0 * np.einsum("ij,j->i", coarse, q_coarse)
        k = min(k, len(bound))
        if k == 0:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        first = np.argpartition(bound, min(FIRST_CHECK + k, len(bound) - 1))[:FIRST_CHECK + k]
        d2 = squared_distances(self.pixels, item(first), q)
        kth = np.partition(d2, k - 1)[k - 1]  # the k-th neighbour is at most this far
        rest = np.setdiff1d(np.flatnonzero(bound <= kth), first, assume_unique=True)
        if len(rest):
            finer = totals[rest] + q_total - 2.0 * np.einsum("ij,j->i", self.fine[item(rest)], q_fine)
            rest = rest[finer <= kth]
        ids = item(np.concatenate([first, rest]))
        d2 = np.concatenate([d2, squared_distances(self.pixels, item(rest), q)])
        best = np.lexsort((ids, d2))[:k]  # ties broken by item id, as a stable sort of all items would
        return ids[best], np.sqrt(d2[best]) / 255.0

    def _query_rows(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
        """bound_blocks for one query, in float32 with einsum: float64 would convert the basis on every query."""
        c = q.astype(np.float32) - self.mean
        y = np.einsum("d,dm->m", c, self.basis)
        total = np.float32(np.dot(c.astype(np.float64), c))
        m = self.coarse_dims
        rows = [np.append(part, np.sqrt(max(total - float(part @ part), 0.0))).astype(np.float32) for part in (y[:m], y)]
        return rows[0], rows[1], np.float32(total * (1.0 - SLACK))


def squared_distances(pixels: np.ndarray, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact integer squared distances between q and the given rows (uint8, 3,072 values each)."""
    diff = pixels[ids].astype(np.int32) - q.astype(np.int32)
    return np.einsum("ij,ij->i", diff, diff).astype(np.int64)


def bound_blocks(pixels: np.ndarray, mean: np.ndarray, basis: np.ndarray, coarse_dims: int):
    """Each image's [y, r] in the coarse and the fine subspace, and ||x - mean||^2 lowered by SLACK,
    so that totals_x + total_q - 2 [y_x, r_x].[y_q, r_q] is a safe lower bound of ||x - q||^2 in
    either subspace despite float32 rounding; yielded as (coarse, fine, totals) blocks of rows. All
    float32: a float64 operand would make numpy copy the whole table on every query."""
    for y, total in projection_blocks(pixels, mean, basis):
        yield bounds(y, total, coarse_dims)


def bounds(y: np.ndarray, total: np.ndarray, coarse_dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bound_blocks' rows from the images' projections y (float32) and squared norms (float64). The
    projection is float32, its rounding far inside SLACK; the rest is float64, differences of large sums."""
    y = np.asarray(y, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    coarse, fine = (np.empty((len(y), m + 1), dtype=np.float32) for m in (coarse_dims, y.shape[1]))
    for out, m in ((coarse, coarse_dims), (fine, y.shape[1])):
        out[:, :m] = y[:, :m]
        out[:, m] = np.sqrt(np.maximum(total - np.einsum("ij,ij->i", y[:, :m], y[:, :m]), 0.0))
    return coarse, fine, (total * (1.0 - SLACK)).astype(np.float32)
