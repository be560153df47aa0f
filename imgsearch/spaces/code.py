"""Code space: the auto-encoder's float code, searched approximately with Annoy (angular).

Annoy keeps no dimension, metric or id map in its file, so meta.json records them, and the
load checks the file's size and a few stored vectors against codes.npy before any search: a
damaged Annoy file can crash the process instead of raising.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .. import layout
from .base import BuildInput, LoadInput, Query, Space, SpaceError

METRIC = "angular"  # cosine: the codes are trained with a cosine (InfoNCE) objective
N_TREES = 20  # from the sweep in docs/speed.md: more trees barely help at a given search_k,
SEARCH_K = 10_000  # which sets the latency; 10,000 keeps recall@10 above 0.98 with a margin, under 1 ms
SEED = 0  # Annoy's tree-splitting seed: the same inputs give a byte-identical index


def build_annoy(codes: np.ndarray, n_trees: int, *, seed: int = SEED, path: Path | None = None,
                n_jobs: int = 1) -> AnnoyIndex:
    """A seeded Annoy index over the codes, item i = row i.

    One thread keeps the tree order, and so the file, deterministic; `path` builds on disk,
    for indexes too large to hold twice in memory.
    """
    ann = AnnoyIndex(codes.shape[1], METRIC)
    ann.set_seed(seed)
    if path is not None:
        ann.on_disk_build(str(path))
    for i, v in enumerate(codes):
        ann.add_item(i, v)
    ann.build(n_trees, n_jobs=n_jobs)
    return ann


class CodeSpace(Space):
    name = "code"
    title = "Code space"
    description = "the auto-encoder's 256-d float code, Annoy (angular: sqrt(2 - 2 cos))"
    metric = METRIC

    def __init__(self, ann: AnnoyIndex, search_k: int):
        self.ann, self.search_k = ann, search_k

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, n_trees: int = N_TREES, search_k: int = SEARCH_K,
              backend: str = "annoy", uri: str | None = None) -> dict:
        if backend == "milvus":  # the codes in a Milvus collection instead of codes.ann (spaces/milvus.py)
            from .milvus import build_code
            return build_code(data, directory, uri=uri)
        if backend != "annoy":
            raise SpaceError(f"the code space's backend is annoy or milvus, not {backend!r}")
        ann = build_annoy(data.codes, n_trees, seed=data.seed)
        ann.save(str(directory / layout.ANNOY))
        ann.unload()
        return {"metric": METRIC, "dims": int(data.codes.shape[1]), "files": [layout.CODES, layout.ANNOY],
                "settings": {"n_trees": n_trees, "search_k": search_k, "seed": data.seed,
                             "ann_bytes": (directory / layout.ANNOY).stat().st_size}}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "CodeSpace":
        s = section["settings"]
        if s.get("backend") == "milvus":
            from .milvus import MilvusCodeSpace
            return MilvusCodeSpace.load(data, section)
        path = data.directory / layout.ANNOY
        if not path.is_file() or path.stat().st_size != s["ann_bytes"]:
            raise SpaceError(f"{layout.ANNOY} is missing or not the size meta.json records")
        ann = AnnoyIndex(data.codes.shape[1], section["metric"])
        try:
            ann.load(str(path))  # memory-mapped: shared between processes, not copied
        except OSError as e:
            raise SpaceError(f"{layout.ANNOY} could not be loaded ({e})") from None
        if ann.get_n_items() != data.items:
            raise SpaceError(f"{layout.ANNOY} holds {ann.get_n_items()} items, meta.json says {data.items}")
        for i in np.linspace(0, data.items - 1, num=min(8, data.items)).astype(int):
            stored = np.asarray(ann.get_item_vector(int(i)), dtype=np.float32)
            if not np.allclose(stored, data.codes[i], rtol=1e-4, atol=1e-5):
                raise SpaceError(f"{layout.ANNOY} and {layout.CODES} disagree at item {i}")
        return cls(ann, int(s["search_k"]))

    def embed(self, query: Query) -> np.ndarray:
        return query.code

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return codes

    def search(self, vector: np.ndarray, k: int, search_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = self.ann.get_nns_by_vector(vector, k, search_k=max(search_k or self.search_k, k),
                                                include_distances=True)
        return np.asarray(ids, dtype=np.int64), np.asarray(dists, dtype=np.float32)
