"""Code space: the auto-encoder's float code, searched approximately (angular), then re-ranked exactly.

Two layouts: an inverted file (k-means lists, the default; spaces/ivf.py) or Annoy's trees
(`build-index --code-index annoy`, and every index built before session 12). This file holds
what they share and Annoy's layout.

Annoy's trees hold each unit-length code projected on the codes' top ANN_DIMS principal
directions, a quarter of its floats: Annoy reads a quarter of the bytes per candidate and builds
its trees ~8x faster. Its CANDIDATES nearest are then ranked by their exact angular distance on
the full codes, which recovers what the projection blurs (docs/speed.md). The items are stored in
locality order (near codes, near items in the file: Annoy reads fewer pages per query), and
`code_ann_rows.npy` maps each Annoy item to its row. Indexes built before keep their layouts
(trees over the full codes; items in row order, no rows file), and load and search as they did.

Annoy keeps no dimension, metric or id map in its file, so meta.json records them, and the
load checks the file's size and a few stored vectors against codes.npy before any search: a
damaged Annoy file can crash the process instead of raising.

Annoy's trees cannot take new items, and building them is most of a build's time at a million
images. So `build-index --update` keeps the previous trees (the same file, hard-linked) while
they still cover most of the collection: `code_ann_rows.npy` then maps each Annoy item to its
row now (-1 for an item whose file is gone), and the rows outside the trees, the new items, are
searched exactly beside them. When those rows and the removed items pass STALE_SHARE of the
collection, the update builds the trees again.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from annoy import AnnoyIndex

from .. import layout, tables
from ..pca import fit_pca
from .base import BuildInput, LoadInput, Query, Space, SpaceError

if TYPE_CHECKING:  # spaces/ivf.py builds on this module (as spaces/milvus.py does): imported where used
    from .ivf import IvfCodeSpace

METRIC = "angular"  # cosine: the codes are trained with a cosine (InfoNCE) objective
ANN_DIMS = 64  # the unit codes' top 64 principal directions keep 94% of their variance at a million items
CANDIDATES = 50  # re-ranked on the full code: the exact top 50 in 64-d held the exact top 10 of 256-d (1M, docs/speed.md)
PROJECTION_FIT_ROWS = 50_000  # the directions of 50,000 codes are those of a million to within noise
N_TREES = 20  # from the sweep in docs/speed.md: more trees barely help at a given search_k,
SEARCH_K = 13_000  # which sets the latency: recall@10 ~0.98 at a million items (docs/speed.md)
SEED = 0  # Annoy's tree-splitting seed: the same inputs give a byte-identical index
CODE_INDEX = "ivf"  # the lists read less per query than Annoy's trees for the same recall (spaces/ivf.py)
PROBES = 64  # lists scanned per query: recall@10 0.9885-0.992 at a million items (0.982-0.983 with 48; docs/speed.md)
CODE_INDEXES = ("ivf", "annoy")
# Annoy reads every candidate's vector from its file. Items stored in locality_order put the
# members of a leaf, of any tree, in a few runs of the file instead of a few hundred scattered
# pages: code search 27% faster at a million items (docs/speed.md). A cell of 256 items is 68 KB;
# splitting on the top 16 of the 64 directions, where the spread is, makes the order ~3 s.
LOCALITY_LEAF, LOCALITY_DIMS = 256, 16
# Rows outside the trees (searched exactly: ~0.3 ms per 10,000) plus removed items (skipped in
# the trees' answers) at most this share of the collection before an update rebuilds the trees.
STALE_SHARE = 0.05


def unit_rows(codes: np.ndarray) -> np.ndarray:
    """Codes at unit length (float32): cosine is then a dot product, and angular distance sqrt(2 - 2 cos)."""
    codes = np.atleast_2d(np.asarray(codes, dtype=np.float32))
    return codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)


def angular(cos: np.ndarray) -> np.ndarray:
    """Annoy's angular distance from a cosine: sqrt(2 - 2 cos), the unit the code space reports."""
    return np.sqrt(np.maximum(2 - 2 * cos, 0)).astype(np.float32)


def fit_tree_directions(codes: np.ndarray, dims: int = ANN_DIMS, seed: int = SEED) -> np.ndarray:
    """(code_dim, dims) top principal directions of the unit codes. No mean is kept: the trees
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


def rerank(codes: np.ndarray, rows: np.ndarray, unit_query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k of `rows` nearest to a unit-length query by exact angular distance on the full codes,
    ties to the smaller id."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted: a memory map reads forward
    if len(rows) == 0:
        return rows, np.empty(0, dtype=np.float32)
    dists = angular(unit_rows(codes[rows]) @ unit_query)
    best = np.lexsort((rows, dists))[:k]
    return rows[best], dists[best]


class CodeSpace(Space):
    name = "code"
    title = "Code space"
    description = "the auto-encoder's 256-d float code: Annoy's trees, then an exact re-rank (angular: sqrt(2 - 2 cos))"
    metric = METRIC
    # Annoy builds its trees on one thread (its multi-threaded build is not deterministic), and adding a
    # million items is a Python loop: ~23 of the space's ~25 s at a million items on one core. The lists'
    # k-means uses both cores in its products, but filing and writing the items is one core's work.
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
    def build(cls, data: BuildInput, directory: Path, *, n_trees: int = N_TREES, search_k: int = SEARCH_K,
              backend: str = "annoy", uri: str | None = None, structure: str = CODE_INDEX,
              probes: int = PROBES) -> dict:
        if backend == "milvus":  # the codes in a Milvus collection instead of codes.ann (spaces/milvus.py)
            from .milvus import build_code
            return build_code(data, directory, uri=uri)
        if backend != "annoy":
            raise SpaceError(f"the code space's backend is annoy or milvus, not {backend!r}")
        if structure not in CODE_INDEXES:
            raise SpaceError(f"the code space's index is {' or '.join(CODE_INDEXES)}, not {structure!r}")
        if structure == "ivf":
            from .ivf import FILES as IVF_FILES, build_lists
            settings = build_lists(data, directory, probes=probes)
            return {"metric": METRIC, "dims": int(data.codes.shape[1]),
                    "files": [layout.CODES, layout.ANNOY_DIRECTIONS, *IVF_FILES],
                    "settings": {**settings, "candidates": CANDIDATES}}
        dims = min(ANN_DIMS, data.codes.shape[1])
        settings = {"n_trees": n_trees, "search_k": search_k, "seed": data.seed, "ann_dims": dims,
                    "candidates": CANDIDATES}
        kept_trees = cls._keep_trees(data, directory, settings)
        if kept_trees:
            return kept_trees
        # Built on disk: the trees grow in the file's pages, which the kernel writes back and drops at
        # will, instead of in the build's own memory and then a second time in save().
        space = annoy_code_search(data.codes, n_trees=n_trees, search_k=search_k, seed=data.seed,
                                   path=directory / layout.ANNOY)
        np.save(directory / layout.ANNOY_DIRECTIONS, space.directions)
        np.save(directory / layout.ANNOY_ROWS, space.ann_rows)
        space.ann.unload()
        return {"metric": METRIC, "dims": int(data.codes.shape[1]),
                "files": [layout.CODES, layout.ANNOY, layout.ANNOY_DIRECTIONS, layout.ANNOY_ROWS],
                "settings": {**settings, "ann_bytes": (directory / layout.ANNOY).stat().st_size,
                             "item_order": "locality", "outside_trees": 0, "removed_from_trees": 0}}

    @classmethod
    def _keep_trees(cls, data: BuildInput, directory: Path, settings: dict) -> dict | None:
        """An update's code space on the previous build's trees, or None when they must be built again
        (no previous build, other settings, or more than STALE_SHARE of the collection outside them)."""
        previous = data.previous
        old = previous and previous.usable_section(cls.name, len(data.codes))
        if not old or any(old["settings"].get(key) != value for key, value in settings.items()):
            return None
        if layout.ANNOY_ROWS in old["files"]:
            old_rows = previous.load_npy(layout.ANNOY_ROWS)
        else:
            old_rows = np.arange(previous.meta["items"], dtype=np.int64)
        row_now = np.full(previous.meta["items"], -1, dtype=np.int64)
        row_now[previous.kept_old] = np.arange(previous.kept)
        ann_rows = np.where(old_rows >= 0, row_now[np.maximum(old_rows, 0)], -1)
        outside = np.flatnonzero(np.bincount(ann_rows[ann_rows >= 0], minlength=len(data.codes)) == 0)
        removed = int((ann_rows < 0).sum())
        if len(outside) + removed > STALE_SHARE * len(data.codes):
            return None
        for name in (layout.ANNOY, layout.ANNOY_DIRECTIONS):
            previous.check(name)
            try:  # the same trees: a hard link costs no copy and no disk
                os.link(previous.directory / name, directory / name)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(previous.directory / name, directory / name)
        np.save(directory / layout.ANNOY_ROWS, ann_rows)
        return {"metric": METRIC, "dims": int(data.codes.shape[1]),
                "files": [layout.CODES, layout.ANNOY, layout.ANNOY_DIRECTIONS, layout.ANNOY_ROWS],
                "settings": {**settings, "ann_bytes": old["settings"]["ann_bytes"],
                             "item_order": old["settings"].get("item_order", "rows"),
                             "fitted_in": previous.fitted_in(old), "outside_trees": len(outside),
                             "removed_from_trees": removed}}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "CodeSpace":
        s = section["settings"]
        if s.get("backend") == "milvus":
            from .milvus import MilvusCodeSpace
            return MilvusCodeSpace.load(data, section)
        if s.get("structure") == "ivf":  # the lists (spaces/ivf.py)
            from .ivf import IvfCodeSpace
            return IvfCodeSpace.load(data, section)
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
        ann_rows, outside = None, None
        if layout.ANNOY_ROWS in section["files"]:
            ann_rows, outside = _segments(data, s)
        if ann.get_n_items() != (data.items if ann_rows is None else len(ann_rows)):
            raise SpaceError(f"{layout.ANNOY} holds {ann.get_n_items()} items, meta.json says "
                             f"{data.items if ann_rows is None else len(ann_rows)}")
        n = ann.get_n_items()
        for j in np.linspace(0, n - 1, num=min(8, n)).astype(int):
            row = int(j) if ann_rows is None else int(ann_rows[j])
            stored = np.asarray(ann.get_item_vector(int(j)), dtype=np.float32)
            expected = data.codes[row] if directions is None else unit_rows(data.codes[row])[0] @ directions
            if row >= 0 and not np.allclose(stored, expected, rtol=1e-4, atol=1e-5):
                raise SpaceError(f"{layout.ANNOY} and {layout.CODES} disagree at item {row}")
        return cls(ann, int(s["search_k"]), data.codes, directions, int(s.get("candidates", CANDIDATES)),
                   ann_rows, outside)

    def embed(self, query: Query) -> np.ndarray:
        return query.code

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return codes

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


def load_directions(data: LoadInput, dims: int) -> np.ndarray:
    """code_ann_directions.npy, checked: the (code_dim, dims) projection the lists or the trees are built over."""
    try:
        directions = np.load(data.directory / layout.ANNOY_DIRECTIONS, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SpaceError(f"{layout.ANNOY_DIRECTIONS} is missing or corrupt ({type(e).__name__})") from None
    if directions.shape != (data.codes.shape[1], dims) or directions.dtype != np.float32:
        raise SpaceError(f"{layout.ANNOY_DIRECTIONS} does not project {data.codes.shape[1]}-d codes "
                         f"to the {dims} dimensions meta.json records")
    return directions


def served_code_search(codes: np.ndarray, *, seed: int = SEED, probes: int = PROBES) -> IvfCodeSpace:
    """The code space as a build makes it by default (the lists), over codes in memory: what evaluate
    measures as "codes, as served". Its files go to a temporary folder, mapped while the space lives."""
    import tempfile

    from .ivf import InvertedFile, IvfCodeSpace

    with tempfile.TemporaryDirectory(prefix="imgsearch-lists-") as folder:
        directory = Path(folder)
        section = CodeSpace.build(BuildInput(np.empty((0, 32, 32, 3), np.uint8), codes, seed=seed), directory,
                                  probes=probes)
        space = IvfCodeSpace.load(LoadInput(directory, len(codes), None, codes), section)
        # In memory: the folder goes now (a mapped file would outlive its name on Linux, not everywhere).
        lists = space.lists
        space.lists = InvertedFile(*(np.array(t) for t in (lists.centroids, lists.offsets, lists.rows, lists.head,
                                                           lists.vectors)), lists.probes, lists.rescored)
    return space


def annoy_code_search(codes: np.ndarray, *, n_trees: int = N_TREES, search_k: int = SEARCH_K, seed: int = SEED,
                      path: Path | None = None, n_jobs: int = 1) -> CodeSpace:
    """The code space on Annoy's trees as a build makes it (CodeSpace.build calls this), over codes in
    memory: the benchmark's Annoy sweep and scale run. Trees over the codes' top ANN_DIMS directions,
    their items in locality order (CodeSpace.ann_rows maps them to rows), then an exact re-rank."""
    directions = fit_tree_directions(codes, min(ANN_DIMS, codes.shape[1]), seed)
    order = locality_order(project_codes(codes, directions[:, :LOCALITY_DIMS]))
    ann = build_annoy(codes, n_trees, directions=directions, order=order, seed=seed, path=path, n_jobs=n_jobs)
    return CodeSpace(ann, search_k, codes, directions, ann_rows=order)


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
