"""The code space on Annoy's trees: the default search structure (`build-index --code-index annoy`).

The trees hold each unit-length code projected on the codes' top ANN_DIMS principal directions, a
quarter of its floats: Annoy reads a quarter of the bytes per candidate and builds its trees ~8x
faster. Its CANDIDATES nearest are then ranked by their exact angular distance on the full codes
(spaces/vectors.py). The items are stored in locality order (near codes, near items in the file:
Annoy reads fewer pages per query), and `code_ann_rows.npy` maps each Annoy item to its row.
Indexes built before the projection or the order keep their layouts (trees over the full codes;
items in row order, no rows file), and load and search as they did.

Annoy keeps no dimension, metric or id map in its file, so meta.json records them, and the load
checks the file's size and a few stored vectors against codes.npy before any search: a damaged
Annoy file can crash the process instead of raising.

Annoy's trees cannot take new items, and building them is most of a build's time at a million
images. So `build-index --update` keeps the previous trees (the same file, hard-linked) while they
still cover most of the collection: `code_ann_rows.npy` then maps each Annoy item to its row now
(-1 for an item whose file is gone), and the rows outside the trees, the new items, are searched
exactly beside them. When those rows and the removed items pass STALE_SHARE of the collection,
the update builds the trees again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .. import layout, tables
from .base import BuildInput, LoadInput, SpaceError
from .code_index import CodeIndex, carry_file, rows_now, whole
from .vectors import (ANN_DIMS, CANDIDATES, METRIC, SEED, angular, checked_items, fit_directions, load_directions,
                      project_codes, rerank, same_vector, save_directions, unit_rows)

N_TREES = 20  # more trees barely help at a given search_k (docs/speed.md), which sets the latency:
SEARCH_K = 6_000  # recall@10 0.99 in ~0.6 ms at 50,000 CIFAR codes (docs/benchmark.json, "code_structures")
SEARCH_K_LARGE, LARGE_ITEMS = 13_000, 200_000  # recall@10 ~0.98 at a million items needs more (docs/speed.md)
# Annoy reads every candidate's vector from its file. Items stored in locality_order put the
# members of a leaf, of any tree, in a few runs of the file instead of a few hundred scattered
# pages: code search 27% faster at a million items (docs/speed.md). A cell of 256 items is 68 KB;
# splitting on the top 16 of the 64 directions, where the spread is, makes the order ~3 s.
LOCALITY_LEAF, LOCALITY_DIMS = 256, 16
# Rows outside the trees (searched exactly: ~0.3 ms per 10,000) plus removed items (skipped in
# the trees' answers) at most this share of the collection before an update rebuilds the trees.
STALE_SHARE = 0.05
FILES = [layout.CODES, layout.ANNOY, layout.ANNOY_DIRECTIONS, layout.ANNOY_ROWS]


def default_search_k(items: int) -> int:
    """search_k when none is given: SEARCH_K, or SEARCH_K_LARGE from LARGE_ITEMS items on."""
    return SEARCH_K if items < LARGE_ITEMS else SEARCH_K_LARGE


def locality_order(points: np.ndarray, leaf: int = LOCALITY_LEAF) -> np.ndarray:
    """Row ids in kd-tree order: every cell of rows is halved at the median of its widest dimension
    until `leaf` rows are left, so rows near each other in space are near each other in the order."""
    order = np.arange(len(points))
    cells = [(0, len(points))]
    while cells:
        start, end = cells.pop()
        if end - start <= leaf:
            continue
        rows = order[start:end]
        cell = points[rows]
        half = (end - start) // 2
        order[start:end] = rows[np.argpartition(cell[:, int(np.argmax(cell.var(0)))], half)]
        cells += [(start, start + half), (start + half, end)]
    return order


def build_annoy(codes: np.ndarray, n_trees: int, *, directions: np.ndarray | None = None,
                order: np.ndarray | None = None, seed: int = SEED, path: Path | None = None, n_jobs: int = 1,
                block: int = 65536) -> AnnoyIndex:
    """A seeded Annoy index whose item j holds row order[j] of the codes (row j without an order): the
    unit code projected on `directions`, Euclidean, or (directions None, the layout before) the code
    itself, angular.

    A block of items at a time: its rows read in ascending order, projected, added. So the
    projections are never held whole (256 MB at a million items) beside the trees' growing file.
    One thread keeps the tree order, and so the file, deterministic; `path` builds on disk,
    for indexes too large to hold twice in memory.
    """
    ann = AnnoyIndex(codes.shape[1] if directions is None else directions.shape[1],
                     METRIC if directions is None else "euclidean")
    ann.set_seed(seed)
    if path is not None:
        ann.on_disk_build(str(path))
    order = np.arange(len(codes)) if order is None else np.asarray(order)
    for start in range(0, len(order), block):
        rows = order[start:start + block]
        ascending = np.argsort(rows, kind="stable")
        vectors = np.asarray(tables.gather(codes, rows[ascending]), dtype=np.float32)
        if directions is not None:
            vectors = unit_rows(vectors) @ directions
        for item, vector in zip(start + ascending, vectors):
            ann.add_item(int(item), vector)
    ann.build(n_trees, n_jobs=n_jobs)
    return ann


class AnnoyTrees(CodeIndex):
    name = "annoy"
    description = "the auto-encoder's 256-d float code: Annoy's trees, then an exact re-rank (angular: sqrt(2 - 2 cos))"
    options = ("n_trees", "search_k")
    knob = "search_k"
    checks = {"n_trees": whole(), "search_k": whole(1), "ann_bytes": whole()}
    # Annoy builds its trees on one thread (its multi-threaded build is not deterministic), and adding a
    # million items is a Python loop: ~23 of the space's ~25 s at a million items on one core.
    builds_beside = True

    def __init__(self, ann: AnnoyIndex, search_k: int, codes: np.ndarray, directions: np.ndarray | None = None,
                 candidates: int = CANDIDATES, ann_rows: np.ndarray | None = None, outside: np.ndarray | None = None):
        self.ann, self.search_k, self.codes = ann, search_k, codes
        self.directions = directions  # (code_dim, ann_dims) the trees' projection; None: trees over the codes themselves
        self.candidates = candidates  # how many of the trees' nearest are re-ranked on the full codes
        self.ann_rows = ann_rows  # Annoy item -> row (-1: removed), or None when item i is row i
        self.outside = outside if outside is not None else np.empty(0, dtype=np.int64)  # rows not in the trees
        self.outside_unit = unit_rows(codes[self.outside]) if len(self.outside) else None
        self.removed = 0 if ann_rows is None else int((ann_rows < 0).sum())

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, n_trees: int = N_TREES, search_k: int | None = None) -> dict:
        dims = min(ANN_DIMS, data.codes.shape[1])
        settings = {"structure": cls.name, "n_trees": n_trees,
                    "search_k": search_k or default_search_k(len(data.codes)), "seed": data.seed, "ann_dims": dims,
                    "candidates": CANDIDATES}
        kept_trees = cls._keep_trees(data, directory, settings)
        if kept_trees:
            return kept_trees
        # Built on disk: the trees grow in the file's pages, which the kernel writes back and drops at
        # will, instead of in the build's own memory and then a second time in save().
        trees = annoy_code_search(data.codes, n_trees=n_trees, search_k=settings["search_k"], seed=data.seed,
                                  path=directory / layout.ANNOY)
        save_directions(directory, trees.directions)
        np.save(directory / layout.ANNOY_ROWS, trees.ann_rows)
        trees.ann.unload()
        return {"metric": METRIC, "dims": int(data.codes.shape[1]), "files": FILES,
                "settings": {**settings, "ann_bytes": (directory / layout.ANNOY).stat().st_size,
                             "item_order": "locality", "outside_trees": 0, "removed_from_trees": 0}}

    @classmethod
    def _keep_trees(cls, data: BuildInput, directory: Path, settings: dict) -> dict | None:
        """An update's code space on the previous build's trees, or None when they must be built again
        (no previous build, other settings, or more than STALE_SHARE of the collection outside them)."""
        previous = data.previous
        old = previous and previous.usable_section("code", len(data.codes))
        if not old or any(old["settings"].get(key, cls.name if key == "structure" else None) != value
                          for key, value in settings.items()):
            return None
        if layout.ANNOY_ROWS in old["files"]:
            old_rows = previous.load_npy(layout.ANNOY_ROWS)
        else:
            old_rows = np.arange(previous.meta["items"], dtype=np.int64)
        ann_rows = rows_now(previous, old_rows)
        outside = np.flatnonzero(np.bincount(ann_rows[ann_rows >= 0], minlength=len(data.codes)) == 0)
        removed = int((ann_rows < 0).sum())
        if len(outside) + removed > STALE_SHARE * len(data.codes):
            return None
        for name in (layout.ANNOY, layout.ANNOY_DIRECTIONS):
            carry_file(previous, name, directory)  # the same trees
        np.save(directory / layout.ANNOY_ROWS, ann_rows)
        return {"metric": METRIC, "dims": int(data.codes.shape[1]), "files": FILES,
                "settings": {**settings, "ann_bytes": old["settings"]["ann_bytes"],
                             "item_order": old["settings"].get("item_order", "rows"),
                             "fitted_in": previous.fitted_in(old), "outside_trees": len(outside),
                             "removed_from_trees": removed}}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "AnnoyTrees":
        s = section["settings"]
        path = data.directory / layout.ANNOY
        if not path.is_file() or path.stat().st_size != s["ann_bytes"]:
            raise SpaceError(f"{layout.ANNOY} is missing or not the size meta.json records")
        # Trees over projected codes; an index built before has trees over the codes, and no directions.
        directions = load_directions(data, s["ann_dims"]) if "ann_dims" in s else None
        ann = (AnnoyIndex(data.codes.shape[1], section["metric"]) if directions is None else
               AnnoyIndex(directions.shape[1], "euclidean"))
        try:
            ann.load(str(path))  # memory-mapped: shared between processes, not copied
        except OSError as e:
            raise SpaceError(f"{layout.ANNOY} could not be loaded ({e})") from None
        ann_rows, outside = _segments(data, s) if layout.ANNOY_ROWS in section["files"] else (None, None)
        if ann.get_n_items() != (data.items if ann_rows is None else len(ann_rows)):
            raise SpaceError(f"{layout.ANNOY} holds {ann.get_n_items()} items, meta.json says "
                             f"{data.items if ann_rows is None else len(ann_rows)}")
        for j in checked_items(ann.get_n_items()):
            row = int(j) if ann_rows is None else int(ann_rows[j])
            expected = data.codes[row] if directions is None else unit_rows(data.codes[row])[0] @ directions
            if row >= 0 and not same_vector(ann.get_item_vector(int(j)), expected):
                raise SpaceError(f"{layout.ANNOY} and {layout.CODES} disagree at item {row}")
        return cls(ann, int(s["search_k"]), data.codes, directions, int(s.get("candidates", CANDIDATES)),
                   ann_rows, outside)

    def search(self, vector: np.ndarray, k: int, search_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        search_k = max(search_k or self.search_k, k)
        unit_query = unit_rows(vector)[0]
        if self.directions is None:  # trees over the codes: Annoy's own angular distances are exact
            ids, dists = self._tree_rows(vector, k, search_k)
        else:
            rows, _ = self._tree_rows(unit_query @ self.directions, max(k, self.candidates), search_k)
            ids, dists = rerank(self.codes, rows, unit_query, k)
        if len(self.outside):  # the rows outside the trees, exactly
            cos = self.outside_unit @ unit_query
            near = np.argpartition(-cos, k - 1)[:k] if len(cos) > k else np.arange(len(cos))
            ids = np.concatenate([ids, self.outside[near]])
            dists = np.concatenate([dists, angular(cos[near])])
            best = np.lexsort((ids, dists))[:k]
            ids, dists = ids[best], dists[best]
        return ids, dists

    def _tree_rows(self, query: np.ndarray, wanted: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """The trees' `wanted` nearest as rows, with Annoy's distances, removed items left out."""
        if self.ann_rows is None:
            items, dists = self.ann.get_nns_by_vector(query, wanted, search_k=max(search_k, wanted),
                                                      include_distances=True)
            return np.asarray(items, dtype=np.int64), np.asarray(dists, dtype=np.float32)
        # Ask for a few more than wanted, and more again in the rare case that removed items still leave fewer.
        asked = wanted + min(self.removed, 2 + wanted // 2)
        while True:
            items, dists = self.ann.get_nns_by_vector(query, asked, search_k=max(search_k, asked),
                                                      include_distances=True)
            rows = self.ann_rows[np.asarray(items, dtype=np.int64)]
            live = rows >= 0
            if live.sum() >= wanted or asked >= self.ann.get_n_items():
                break
            asked *= 2
        return rows[live][:wanted], np.asarray(dists, dtype=np.float32)[live][:wanted]


def annoy_code_search(codes: np.ndarray, *, n_trees: int = N_TREES, search_k: int = SEARCH_K, seed: int = SEED,
                      path: Path | None = None, n_jobs: int = 1) -> AnnoyTrees:
    """The trees as a build makes them (AnnoyTrees.build calls this), over codes in memory: the
    benchmark's Annoy sweep and scale run. Trees over the codes' top ANN_DIMS directions, their
    items in locality order (AnnoyTrees.ann_rows maps them to rows), then an exact re-rank."""
    directions = fit_directions(codes, min(ANN_DIMS, codes.shape[1]), seed)
    order = locality_order(project_codes(codes, directions[:, :LOCALITY_DIMS]))
    ann = build_annoy(codes, n_trees, directions=directions, order=order, seed=seed, path=path, n_jobs=n_jobs)
    return AnnoyTrees(ann, search_k, codes, directions, ann_rows=order)


def _segments(data: LoadInput, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """code_ann_rows.npy, checked, and the rows outside the trees."""
    try:
        ann_rows = np.load(data.directory / layout.ANNOY_ROWS, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SpaceError(f"{layout.ANNOY_ROWS} is missing or corrupt ({type(e).__name__})") from None
    ok = ann_rows.ndim == 1 and ann_rows.dtype.kind == "i" and (not len(ann_rows) or
                                                                -1 <= ann_rows.min() <= ann_rows.max() < data.items)
    times = np.bincount(ann_rows[ann_rows >= 0], minlength=data.items) if ok else None  # O(N): no sort at 1M
    if times is None or (len(times) and times.max() > 1):
        raise SpaceError(f"{layout.ANNOY_ROWS} does not map the Annoy items to distinct items of this index")
    outside = np.flatnonzero(times == 0)
    if len(outside) != settings.get("outside_trees"):
        raise SpaceError(f"{layout.ANNOY_ROWS} leaves {len(outside)} items outside the trees, meta.json says "
                         f"{settings.get('outside_trees')}")
    return ann_rows, outside
