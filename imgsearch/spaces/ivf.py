"""Code space, inverted file: k-means lists over the codes' 64-d projections, scanned whole.

The default code index since session 12 (docs/speed.md). Each unit code is projected on the
codes' top 64 principal directions (as for Annoy's trees); k-means splits the projections into
~2·sqrt(N) lists, and the items of a list are stored next to each other. A query scans the
PROBES lists whose centres are nearest, reading only the first SCAN_DIMS dimensions of each item
(where most of the spread is), scores the RESCORED best in all 64, and ranks the CANDIDATES best
of those again by exact angular distance on the full codes (as for Annoy).

Why not Annoy's trees: at a million items Annoy visits ~13,000 candidates per query, each a
read from a scattered place in its file, for recall@10 0.98 in 1.6-1.7 ms here. The lists are
read front to back, ~31,000 items of 100 bytes each, with one matrix-vector product per list:
recall@10 0.99 in ~1.0 ms in the same process (a probe in docs/speed.md). Annoy's layouts still
build (`build-index --code-index annoy`) and load (spaces/code.py).

Files (row-aligned with the lists, not the items; `code_ivf_rows.npy` maps them back):

    code_ann_directions.npy  (code_dim, 64) the projection, shared with Annoy's layout
    code_ivf_centroids.npy   (lists, 64) float32 k-means centres
    code_ivf_offsets.npy     (lists + 1,) int64: list j is entries offsets[j] ... offsets[j+1] - 1
    code_ivf_rows.npy        (N,) int64: the item of each entry
    code_ivf_head.npy        (N, SCAN_DIMS + 1) float32: the first SCAN_DIMS projections, then -|x|^2 / 2
    code_ivf_vectors.npy     (N, 65) float32: all 64 projections, then -|x|^2 / 2

The last column turns the nearest point into the largest product: |x - q|^2 = |q|^2 - 2 (x.q - |x|^2/2),
so a list is scored by one matrix-vector product with (q, 1) and nothing else is read.

An update keeps the previous centres (like the pca space keeps its PCA) while most items were in
the collection they were fitted on, and files every item into its nearest list again: a new
item is in the lists at once, never searched apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import layout, tables
from .base import BuildInput, LoadInput, SpaceError
from .code import (ANN_DIMS, CANDIDATES, PROBES, CodeSpace, fit_tree_directions, load_directions, project_codes,
                   rerank, unit_rows)

LISTS_PER_ROOT = 2  # lists = 2·sqrt(N): 2,000 at a million (4,096 lists needed as many items read per recall, probe)
SCAN_DIMS = 24  # dimensions read per scanned item: 16 held 0.9915 and 24 0.992 of 64's 0.992 (probe)
RESCORED = 1000  # the best of the scan scored in all 64 dimensions
KMEANS_ROWS_PER_LIST = 50  # the centres are fitted on a seeded sample of 50 items per list (100,000 at a million)
KMEANS_ROUNDS = 12
ASSIGN_ROWS = 8192  # items filed at once: an (8,192 x lists) float32 block of products, 64 MB at a million


def list_count(items: int) -> int:
    return max(1, min(items, int(round(LISTS_PER_ROOT * np.sqrt(items)))))


def fit_centroids(codes: np.ndarray, directions: np.ndarray, lists: int, seed: int) -> np.ndarray:
    """k-means centres of the projected codes, from a seeded sample; deterministic for given inputs."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    sample_rows = np.sort(rng.choice(n, min(n, KMEANS_ROWS_PER_LIST * lists), replace=False))
    sample = unit_rows(tables.gather(codes, sample_rows)) @ directions
    centroids = sample[np.sort(rng.choice(len(sample), lists, replace=False))].copy()
    for _ in range(KMEANS_ROUNDS):
        nearest = nearest_list(sample, centroids)
        order = np.argsort(nearest, kind="stable")
        counts = np.bincount(nearest, minlength=lists)
        filled = np.flatnonzero(counts)
        sums = np.add.reduceat(sample[order].astype(np.float64), np.concatenate([[0], np.cumsum(counts)[:-1]])[filled])
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)  # an empty list keeps its centre
    return centroids


def nearest_list(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N,) int64: the list whose centre is nearest each point (ties to the lower list)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(points), dtype=np.int64)
    for s in range(0, len(points), ASSIGN_ROWS):
        out[s:s + ASSIGN_ROWS] = np.argmax(points[s:s + ASSIGN_ROWS] @ centroids.T - half_norms, axis=1)
    return out


def with_half_norms(x: np.ndarray) -> np.ndarray:
    """x with a last column -|x|^2 / 2: the nearest row to q is the one with the largest product with (q, 1)."""
    return np.concatenate([x, -0.5 * np.einsum("ij,ij->i", x, x)[:, None]], axis=1).astype(np.float32)


def write_lists(codes: np.ndarray, directions: np.ndarray, centroids: np.ndarray, directory: Path,
                scan_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """File every item into its nearest list and write the list files; returns (offsets, rows).

    The codes are read twice, block by block (to file them, then in list order to write the
    tables), so the projections (256 MB at a million) are never held whole."""
    nearest = np.empty(len(codes), dtype=np.int64)
    for s, block in tables.row_blocks(codes, 65536):
        nearest[s:s + len(block)] = nearest_list(project_codes(block, directions), centroids)
    rows = np.argsort(nearest, kind="stable")  # within a list, items in row order
    offsets = np.concatenate([[0], np.cumsum(np.bincount(nearest, minlength=len(centroids)))]).astype(np.int64)
    dims = directions.shape[1]
    head = tables.NpyWriter(directory / layout.IVF_HEAD, (len(codes), scan_dims + 1), np.float32)
    vectors = tables.NpyWriter(directory / layout.IVF_VECTORS, (len(codes), dims + 1), np.float32)
    for s in range(0, len(rows), 65536):
        part = rows[s:s + 65536]
        ascending = np.argsort(part, kind="stable")
        x = np.empty((len(part), dims), dtype=np.float32)
        x[ascending] = unit_rows(tables.gather(codes, part[ascending])) @ directions  # read forward, put back in list order
        head.write(with_half_norms(x[:, :scan_dims]))
        vectors.write(with_half_norms(x))
    head.close()
    vectors.close()
    np.save(directory / layout.IVF_CENTROIDS, centroids)
    np.save(directory / layout.IVF_OFFSETS, offsets)
    np.save(directory / layout.IVF_ROWS, rows)
    return offsets, rows


def build_lists(data: BuildInput, directory: Path, *, probes: int) -> dict:
    """Write the code space's projection and lists; return its meta.json settings. An update keeps the
    previous projection and centres when it may (most items were in the collection they were fitted on)."""
    codes = data.codes
    dims = min(ANN_DIMS, codes.shape[1])
    scan_dims = min(SCAN_DIMS, dims)
    settings = {"structure": "ivf", "ann_dims": dims, "scan_dims": scan_dims, "rescored": RESCORED,
                "probes": probes, "seed": data.seed}
    previous = data.previous
    old = previous and previous.usable_section("code", len(codes))
    if old and all(old["settings"].get(key) == settings[key] for key in ("structure", "ann_dims", "scan_dims", "seed")):
        directions = previous.load_npy(layout.ANNOY_DIRECTIONS)
        centroids = previous.load_npy(layout.IVF_CENTROIDS)
        settings["fitted_in"] = previous.fitted_in(old)
    else:
        directions = fit_tree_directions(codes, dims, data.seed)
        centroids = fit_centroids(codes, directions, list_count(len(codes)), data.seed)
    np.save(directory / layout.ANNOY_DIRECTIONS, directions)
    offsets, _ = write_lists(codes, directions, centroids, directory, scan_dims)
    return {**settings, "lists": len(centroids), "largest_list": int(np.diff(offsets).max())}


FILES = (layout.IVF_CENTROIDS, layout.IVF_OFFSETS, layout.IVF_ROWS, layout.IVF_HEAD, layout.IVF_VECTORS)


class InvertedFile:
    """The lists as loaded (every table memory-mapped), and the scan."""

    def __init__(self, centroids, offsets, rows, head, vectors, probes: int, rescored: int):
        self.centroids, self.offsets, self.rows, self.head, self.vectors = centroids, offsets, rows, head, vectors
        self.half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
        self.probes, self.rescored = probes, rescored

    @classmethod
    def load(cls, data: LoadInput, settings: dict, dims: int) -> "InvertedFile":
        tables_ = {}
        for name in FILES:
            try:
                tables_[name] = np.load(data.directory / name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise SpaceError(f"{name} is missing or corrupt ({type(e).__name__})") from None
        centroids, offsets, rows = (np.asarray(tables_[n]) for n in FILES[:3])
        head, vectors = tables_[layout.IVF_HEAD], tables_[layout.IVF_VECTORS]
        lists, scan = settings["lists"], settings["scan_dims"]
        if centroids.shape != (lists, dims) or offsets.shape != (lists + 1,) or centroids.dtype != np.float32:
            raise SpaceError(f"{layout.IVF_CENTROIDS} and {layout.IVF_OFFSETS} do not describe the "
                             f"{lists} lists of {dims} dimensions that meta.json records")
        if offsets[0] != 0 or offsets[-1] != data.items or np.any(np.diff(offsets) < 0):
            raise SpaceError(f"{layout.IVF_OFFSETS} does not split {data.items} items into lists")
        every_item_once = rows.shape == (data.items,) and rows.dtype.kind == "i" and (not data.items or (
            0 <= rows.min() and rows.max() < data.items and np.bincount(rows, minlength=data.items).max() == 1))
        if not every_item_once:
            raise SpaceError(f"{layout.IVF_ROWS} does not hold every item of this index once")
        if head.shape != (data.items, scan + 1) or vectors.shape != (data.items, dims + 1) or \
                head.dtype != np.float32 or vectors.dtype != np.float32:
            raise SpaceError(f"{layout.IVF_HEAD} or {layout.IVF_VECTORS} is not the shape meta.json records")
        return cls(centroids, offsets, rows, head, vectors, int(settings["probes"]), int(settings["rescored"]))

    def nearest_rows(self, q: np.ndarray, wanted: int, probes: int | None = None) -> np.ndarray:
        """Rows of the `wanted` items nearest the projected query q (Euclidean) among the probed lists."""
        q = np.asarray(q, dtype=np.float32)
        lists = len(self.centroids)
        probes = min(probes or self.probes, lists)
        closeness = self.centroids @ q - self.half_norms
        chosen = np.argpartition(-closeness, probes - 1)[:probes] if probes < lists else np.arange(lists)
        starts, ends = self.offsets[chosen], self.offsets[chosen + 1]
        scan = self.head.shape[1] - 1
        q_head = np.append(q[:scan], np.float32(1))
        scores = np.concatenate([self.head[s:e] @ q_head for s, e in zip(starts, ends)])
        sizes = ends - starts
        entries = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(len(scores))
        rescored = max(self.rescored, wanted)
        if len(entries) > rescored:
            entries = entries[np.argpartition(-scores, rescored - 1)[:rescored]]
        entries.sort()  # read forward
        scores = self.vectors[entries] @ np.append(q, np.float32(1))
        if len(entries) > wanted:
            entries = entries[np.argpartition(-scores, wanted - 1)[:wanted]]
        return np.asarray(self.rows[entries], dtype=np.int64)


class IvfCodeSpace(CodeSpace):
    """The code space on its lists: the probed lists' nearest, re-ranked on the full codes (as Annoy's are)."""
    description = ("the auto-encoder's 256-d float code: k-means lists scanned, then an exact re-rank "
                   "(angular: sqrt(2 - 2 cos))")

    def __init__(self, lists: InvertedFile, codes: np.ndarray, directions: np.ndarray, candidates: int = CANDIDATES):
        self.lists, self.codes, self.directions, self.candidates = lists, codes, directions, candidates

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "IvfCodeSpace":
        s = section["settings"]
        directions = load_directions(data, s["ann_dims"])
        lists = InvertedFile.load(data, s, s["ann_dims"])
        for entry in np.linspace(0, data.items - 1, num=min(8, data.items)).astype(int):  # the lists hold these codes
            row = int(lists.rows[entry])
            if not np.allclose(lists.vectors[entry, :-1], unit_rows(data.codes[row])[0] @ directions, rtol=1e-4, atol=1e-5):
                raise SpaceError(f"{layout.IVF_VECTORS} and {layout.CODES} disagree at item {row}")
        return cls(lists, data.codes, directions, int(s.get("candidates", CANDIDATES)))

    def search(self, vector: np.ndarray, k: int, probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`probes`: lists scanned (default: the build's setting); all of them make the search exact."""
        unit_query = unit_rows(vector)[0]
        rows = self.lists.nearest_rows(unit_query @ self.directions, max(k, self.candidates), probes)
        return rerank(self.codes, rows, unit_query, k)
