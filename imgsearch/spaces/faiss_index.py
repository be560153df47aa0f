"""The code space on faiss: inverted lists (`build-index --code-index faiss`) or an HNSW graph
(`--code-index faiss_hnsw`), over the same 64 projected dimensions as Annoy's trees, then the exact
re-rank of their CANDIDATES nearest on the full codes (spaces/vectors.py).

- faiss (IndexIVFFlat): k-means lists of the projected codes, sqrt(N) of them; a query scans the
  `probes` lists whose centres are nearest (faiss's nprobe). `build-index --update` keeps the lists'
  centres (the quantizer) and the projection while most items were in the collection they were fitted
  on, removes the items that are gone (`remove_ids`) and adds the new ones (`add_with_ids`): nothing is
  fitted again, and a new item is in the lists at once.
- faiss_hnsw (IndexHNSWFlat, M = HNSW_M): a graph walked from its entry point; `probes` is faiss's
  efSearch, the candidates kept on the walk. Its graph cannot drop items, and faiss builds it on all
  cores, so its file is not the same from one build to the next; an update builds it again.

Files: `code_faiss.index` in faiss's own format (`faiss.write_index` / `read_index`), covered by
meta.json's checksums like every other file. The graph is read memory-mapped (IO_FLAG_MMAP), so
processes share it; the lists are read into memory (64 floats an item, 256 MB at a million), because
searched through faiss's memory map they took 2.4 ms a query at 50,000 codes against 0.22 ms;
`code_faiss_rows.npy` maps each faiss id to its row (-1: removed by an update); and the projection,
`code_ann_directions.npy`, shared with Annoy's layout.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .. import layout, tables
from .base import BuildInput, LoadInput, SpaceError
from .code_index import CodeIndex, rows_now, whole
from .vectors import (ANN_DIMS, CANDIDATES, METRIC, checked_items, fit_directions, load_directions, project_codes,
                      rerank, same_vector, save_directions, unit_rows)

PROBES = 32  # lists scanned (or efSearch): recall@10 0.99 at 50,000 CIFAR codes for either (docs/benchmark.json)
HNSW_M = 32  # graph neighbours per item: M 16 needed twice the efSearch for the same recall (docs/speed.md)
TRAIN_ROWS_PER_LIST = 64  # k-means fitted on a seeded sample of 64 items per list (64,000 at a million)
ADD_ROWS = 65536  # items projected and added at once: 16 MB of projections
FILES = [layout.CODES, layout.ANNOY_DIRECTIONS, layout.FAISS_INDEX, layout.FAISS_ROWS]


def list_count(items: int) -> int:
    return max(1, min(items, int(round(np.sqrt(items)))))


class FaissLists(CodeIndex):
    name = "faiss"
    description = ("the auto-encoder's 256-d float code: faiss's inverted lists, then an exact re-rank "
                   "(angular: sqrt(2 - 2 cos))")
    options = ("probes",)
    knob = "probes"
    checks = {"probes": whole(1), "ann_dims": whole(1), "lists": whole(1)}
    mmap = False  # read whole: faiss's memory-mapped lists searched ~10x slower (the module's docstring)

    def __init__(self, index: faiss.Index, rows: np.ndarray, codes: np.ndarray, directions: np.ndarray,
                 probes: int, candidates: int = CANDIDATES):
        self.index, self.rows, self.codes, self.directions = index, rows, codes, directions
        self.probes, self.candidates = probes, candidates

    # ---- what the two layouts do differently ----

    @classmethod
    def new_index(cls, projected: np.ndarray, seed: int) -> faiss.Index:
        """An empty index over these projections, its lists' centres fitted on a seeded sample of them."""
        lists = list_count(len(projected))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(projected.shape[1]), projected.shape[1], lists)
        index.cp.seed, index.cp.min_points_per_centroid = seed, 1  # small collections: no warning, same lists
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(projected), min(len(projected), TRAIN_ROWS_PER_LIST * lists), replace=False))
        index.train(np.ascontiguousarray(projected[sample]))
        return index

    @staticmethod
    def params(probes: int):
        return faiss.SearchParametersIVF(nprobe=probes)

    @staticmethod
    def structure_settings(index: faiss.Index) -> dict:
        return {"lists": int(index.nlist)}

    # ---- build, update, load, search ----

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, probes: int = PROBES) -> dict:
        codes = data.codes
        dims = min(ANN_DIMS, codes.shape[1])
        settings = {"structure": cls.name, "probes": probes, "ann_dims": dims, "seed": data.seed,
                    "candidates": CANDIDATES}
        carried = cls._carried(data, settings)
        if carried is None:
            directions = fit_directions(codes, dims, data.seed)
            index = cls.new_index(project_codes(codes, directions), data.seed)
            rows = np.arange(len(codes), dtype=np.int64)
            _add(index, codes, directions, rows, np.arange(len(codes), dtype=np.int64))
        else:
            directions, index, rows, fitted_in = carried
            settings["fitted_in"] = fitted_in
        save_directions(directory, directions)
        faiss.write_index(index, str(directory / layout.FAISS_INDEX))
        np.save(directory / layout.FAISS_ROWS, rows)
        return {"metric": METRIC, "dims": int(codes.shape[1]), "files": FILES,
                "settings": {**settings, **cls.structure_settings(index), "removed": int((rows < 0).sum())}}

    @classmethod
    def _carried(cls, data: BuildInput, settings: dict):
        """An update on the previous build's lists: (directions, index, id -> row, fitted_in), the items
        that are gone removed and the new ones added; None when the lists must be fitted again."""
        previous = data.previous
        old = previous and previous.usable_section("code", len(data.codes))
        same = old and all(old["settings"].get(key) == settings[key] for key in ("structure", "ann_dims", "seed"))
        if not same or cls.name != "faiss":  # a graph cannot drop items: it is built again
            return None
        directions = previous.load_npy(layout.ANNOY_DIRECTIONS)
        previous.check(layout.FAISS_INDEX)
        index = read(previous.directory / layout.FAISS_INDEX, mmap=False)
        old_rows = previous.load_npy(layout.FAISS_ROWS)
        rows = rows_now(previous, old_rows)
        index.remove_ids(np.flatnonzero((old_rows >= 0) & (rows < 0)).astype(np.int64))  # gone since the last build
        new_rows = np.arange(previous.kept, len(data.codes), dtype=np.int64)
        new_ids = len(rows) + np.arange(len(new_rows), dtype=np.int64)
        _add(index, data.codes, directions, new_rows, new_ids)
        return directions, index, np.concatenate([rows, new_rows]), previous.fitted_in(old)

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "FaissLists":
        s = section["settings"]
        directions = load_directions(data, s["ann_dims"])
        index = read(data.directory / layout.FAISS_INDEX, mmap=cls.mmap)
        try:
            rows = np.load(data.directory / layout.FAISS_ROWS, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SpaceError(f"{layout.FAISS_ROWS} is missing or corrupt ({type(e).__name__})") from None
        live = rows[rows >= 0] if rows.ndim == 1 and rows.dtype.kind == "i" else None
        if live is None or (len(live) and live.max() >= data.items) or len(live) != data.items \
                or np.bincount(live, minlength=data.items).max(initial=0) > 1:
            raise SpaceError(f"{layout.FAISS_ROWS} does not map the faiss ids to the items of this index, each once")
        if index.d != s["ann_dims"] or index.ntotal != data.items or \
                cls.structure_settings(index) != {k: s.get(k) for k in cls.structure_settings(index)}:
            raise SpaceError(f"{layout.FAISS_INDEX} is not the {s['ann_dims']}-d index of {data.items} items "
                             "meta.json records")
        for stored_id, stored in cls.stored(index):
            row = int(rows[stored_id]) if 0 <= stored_id < len(rows) else -1
            if row < 0 or not same_vector(stored, unit_rows(data.codes[row])[0] @ directions):
                raise SpaceError(f"{layout.FAISS_INDEX} and {layout.CODES} disagree at item {max(row, 0)}")
        return cls(index, rows, data.codes, directions, int(s["probes"]), int(s.get("candidates", CANDIDATES)))

    @staticmethod
    def stored(index: faiss.Index):
        """(id, vector) of a few stored entries, as faiss holds them: the first of a few lists."""
        lists = index.invlists
        filled = np.array([j for j in range(index.nlist) if lists.list_size(j)], dtype=np.int64)
        for j in filled[checked_items(len(filled))] if len(filled) else ():
            ids = faiss.rev_swig_ptr(lists.get_ids(int(j)), 1)
            vector = faiss.rev_swig_ptr(lists.get_codes(int(j)), index.code_size).view(np.float32)
            yield int(ids[0]), vector.copy()

    def search(self, vector: np.ndarray, k: int, probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`probes`: lists scanned (efSearch for the graph); default the build's setting."""
        unit_query = unit_rows(vector)[0]
        q = (unit_query @ self.directions)[None].astype(np.float32)
        wanted = min(max(k, self.candidates), self.index.ntotal)
        # One thread: a query reads a few thousand items, less work than waking a second one; on the shared
        # cores here two threads took p95 from 0.38 to 1.0 ms at 50,000 codes. The setting is this thread's own.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, ids = self.index.search(q, wanted, params=self.params(probes or self.probes))
        finally:
            faiss.omp_set_num_threads(threads)
        ids = ids[0][ids[0] >= 0]
        rows = self.rows[ids]
        return rerank(self.codes, rows[rows >= 0], unit_query, k)


class FaissGraph(FaissLists):
    name = "faiss_hnsw"
    description = ("the auto-encoder's 256-d float code: faiss's HNSW graph, then an exact re-rank "
                   "(angular: sqrt(2 - 2 cos))")
    checks = {"probes": whole(1), "ann_dims": whole(1), "hnsw_m": whole(1)}
    mmap = True

    @classmethod
    def new_index(cls, projected: np.ndarray, seed: int) -> faiss.Index:
        return faiss.IndexHNSWFlat(projected.shape[1], HNSW_M)

    @staticmethod
    def params(probes: int):
        return faiss.SearchParametersHNSW(efSearch=probes)

    @staticmethod
    def structure_settings(index: faiss.Index) -> dict:
        return {"hnsw_m": int(index.hnsw.nb_neighbors(1))}

    @staticmethod
    def stored(index: faiss.Index):
        for j in checked_items(index.ntotal):
            yield int(j), index.reconstruct(int(j))


def _add(index: faiss.Index, codes: np.ndarray, directions: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> None:
    """Add the given rows' projections under `ids`, a block at a time (a graph numbers them itself, in order)."""
    for s in range(0, len(rows), ADD_ROWS):
        block = project_codes(tables.gather(codes, rows[s:s + ADD_ROWS]), directions)
        if isinstance(index, faiss.IndexHNSW):
            index.add(block)
        else:
            index.add_with_ids(block, ids[s:s + ADD_ROWS])


def read(path: Path, *, mmap: bool) -> faiss.Index:
    """A faiss index file, memory-mapped when `mmap`, or SpaceError (faiss raises RuntimeError on damage)."""
    if not path.is_file():
        raise SpaceError(f"{path.name} is missing or corrupt (FileNotFoundError)")
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError:
        raise SpaceError(f"{path.name} is missing or corrupt (faiss cannot read it)") from None
