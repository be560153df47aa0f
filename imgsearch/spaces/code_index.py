"""What a search structure of the code space is: the one small interface every backend (Annoy's
trees, faiss's lists or graph, a Milvus collection) implements. spaces/backends.py holds them in a
table by name; the code space (spaces/code.py) asks that table for one and never imports a backend,
and a backend imports this module and spaces/vectors.py, never a space.

A structure returns, from `search`, the ids and angular distances of the k nearest items, nearest
first, ties to the smaller id; an approximate one finds candidates and re-ranks them exactly on
the full codes (`vectors.rerank`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from .base import BuildInput, LoadInput, Reuse


def whole(least: int = 0) -> Callable[[object], bool]:
    """A setting's check: a whole number (not a bool) of at least `least`."""
    return lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= least


class CodeIndex:
    name: ClassVar[str]  # the name in the table, `build-index --code-index NAME`, and meta.json's settings["structure"]
    description: ClassVar[str]  # how it searches, one line for the page
    options: ClassVar[tuple[str, ...]] = ()  # the build options it takes (build_index passes it only these)
    knob: ClassVar[str | None] = None  # search()'s keyword trading recall for time (search_k, probes), if any
    checks: ClassVar[dict[str, Callable[[object], bool]]] = {}  # settings its load reads, and their tests
    local: ClassVar[bool] = True  # its files live in the index directory (False: a server's collection)
    builds_beside: ClassVar[bool] = False  # its build runs on one core: build_index builds it beside the others

    @classmethod
    def build(cls, data: BuildInput, directory: Path, **options) -> dict:
        """Write the structure's files into `directory`; return the code space's meta.json section
        (metric, dims, files, settings)."""
        raise NotImplementedError

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "CodeIndex":
        """Read and check the structure's files; raise SpaceError with one sentence when they are unusable."""
        raise NotImplementedError

    def search(self, vector: np.ndarray, k: int, **knob) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest the code `vector`: ids and angular distances, nearest first."""
        raise NotImplementedError


def carry_file(previous: Reuse, name: str, directory: Path) -> None:
    """A file of the previous build into this one, checked first: a hard link costs no copy and no disk."""
    previous.check(name)
    try:
        os.link(previous.directory / name, directory / name)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(previous.directory / name, directory / name)


def rows_now(previous: Reuse, old_rows: np.ndarray) -> np.ndarray:
    """An update's map from a structure's stored ids to rows: `old_rows` (stored id -> row of the previous
    build, -1 removed) turned into stored id -> row of this build, -1 where the item is gone."""
    row_now = np.full(previous.meta["items"], -1, dtype=np.int64)
    row_now[previous.kept_old] = np.arange(previous.kept)
    return np.where(old_rows >= 0, row_now[np.maximum(old_rows, 0)], -1)
