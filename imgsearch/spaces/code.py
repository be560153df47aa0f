"""Code space: the auto-encoder's float code, searched by angular distance on one of the structures
in spaces/backends.py: Annoy's trees (the default), faiss's lists or graph, or a Milvus collection.

The approximate structures search the unit codes projected on their top 64 principal directions and
re-rank their nearest candidates exactly on the full codes (spaces/vectors.py); docs/speed.md
measures them side by side. meta.json's settings["structure"] names the structure an index was
built on (builds that recorded none are on Annoy's trees), and the load asks the table for it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .backends import CODE_INDEX, CODE_INDEXES, RETIRED, structure_of
from .base import BuildInput, LoadInput, Query, Space, SpaceError
from .code_index import CodeIndex
from .vectors import METRIC, SEED

LOCAL = "local"  # --backend: the structure's files in the index directory (`--code-index` says which)


class CodeSpace(Space):
    name = "code"
    title = "Code space"
    metric = METRIC
    # Annoy builds its trees on one core: build_index builds this space in a thread beside the others.
    builds_beside = True

    def __init__(self, structure: CodeIndex):
        self.structure = structure

    @property
    def description(self) -> str:
        return self.structure.description

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, structure: str = CODE_INDEX, backend: str = LOCAL,
              **options) -> dict:
        """`structure` names a table entry with files here; `backend` another place than LOCAL (milvus).
        Each structure is handed the options it takes (`CodeIndex.options`), and ignores the others."""
        name = structure if backend == LOCAL else backend
        chosen = CODE_INDEXES.get(name)
        if chosen is None or (backend == LOCAL) != chosen.local:
            known = ", ".join(n for n, c in CODE_INDEXES.items() if c.local == (backend == LOCAL))
            raise SpaceError(f"the code space's {'index' if backend == LOCAL else 'backend'} is one of {known}, "
                             f"not {name!r}")
        return chosen.build(data, directory, **{k: v for k, v in options.items() if k in chosen.options})

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "CodeSpace":
        name = structure_of(section["settings"])
        if name in RETIRED:
            raise SpaceError(RETIRED[name])
        if name not in CODE_INDEXES:
            raise SpaceError(f"it is on the structure {name[:40]!r}, which this version does not know")
        return cls(CODE_INDEXES[name].load(data, section))

    def embed(self, query: Query) -> np.ndarray:
        return query.code

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return codes

    def search(self, vector: np.ndarray, k: int, **knob) -> tuple[np.ndarray, np.ndarray]:
        """`knob`: the structure's search-time setting (`CodeIndex.knob`: search_k, probes), if it has one."""
        return self.structure.search(vector, k, **knob)


def served_code_search(codes: np.ndarray, *, structure: str = CODE_INDEX, seed: int = SEED, **options) -> CodeIndex:
    """A structure as a build makes it, over codes in memory: what evaluate measures as "codes, as served"
    and the benchmark times. Its files go to a temporary folder, removed when the structure is."""
    folder = tempfile.TemporaryDirectory(prefix="imgsearch-code-")
    directory = Path(folder.name)
    chosen = CODE_INDEXES[structure]
    section = chosen.build(BuildInput(np.empty((0, 32, 32, 3), np.uint8), codes, seed=seed), directory,
                           **{k: v for k, v in options.items() if k in chosen.options})
    loaded = chosen.load(LoadInput(directory, len(codes), None, codes), section)
    loaded.folder = folder  # mapped files stay named while the structure lives
    loaded.section = section
    return loaded
