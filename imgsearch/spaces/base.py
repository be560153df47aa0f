"""What every search space is: a name, a metric, how it embeds a query, how it builds and
reads its files in the index directory, and `search(vector, k) -> ids, distances`.

A space is built once per index from the collection (`BuildInput`) and loaded by `Index.load`
(`LoadInput` hands it the files every space shares, so none is read twice).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ..pca import PCA, fit_pca

PIXEL_PCA_COMPONENTS = 256  # the pca space's length (the code's), and the pixel bound uses its first few
PCA_FIT_ROWS = 20_000  # a seeded sample fits the components as well as the whole collection, in seconds


@dataclass
class BuildInput:
    """The collection as the spaces see it at build time; row i is item i."""
    pixels: np.ndarray  # (N, 32, 32, 3) uint8
    codes: np.ndarray  # (N, code_dim) float32: the auto-encoder's codes
    seed: int = 0
    options: dict = field(default_factory=dict)  # space name -> keyword options (n_trees, bits, ...)

    @cached_property
    def pixel_pca(self) -> PCA:
        """One PCA of the pixels for every space that needs one (pca, the pixel bound)."""
        return fit_pca(self.pixels, PIXEL_PCA_COMPONENTS, max_rows=PCA_FIT_ROWS, seed=self.seed)


@dataclass
class LoadInput:
    """What `Index.load` has already read, for the spaces to share."""
    directory: Path
    items: int
    pixels: np.ndarray
    codes: np.ndarray


class Query:
    """A query as every space sees it: its 32x32 pixels, and its code, computed once when asked for."""

    def __init__(self, pixels: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]):
        self.pixels = pixels
        self._encode = encode

    @cached_property
    def code(self) -> np.ndarray:
        return self._encode(self.pixels)


class SpaceError(ValueError):
    """A space's files do not match what meta.json says; the message says which and why."""


class SpaceUnavailable(SpaceError):
    """A service the space searches in (a Milvus server) cannot be reached now: the index may be fine."""


class Space:
    name: ClassVar[str]
    title: ClassVar[str]  # column header on the page
    description: ClassVar[str]  # one line for the page
    metric: ClassVar[str]  # how distances are measured, in words
    unit: ClassVar[str] = ""  # shown after a distance ("bits"); empty for plain numbers
    distance_format: ClassVar[str] = "{:.3f}"

    @classmethod
    def build(cls, data: BuildInput, directory: Path, **options) -> dict:
        """Write this space's files into `directory`; return its `meta.json` section.

        The section holds at least `metric`, `dims` (or `bits`), `files` and `settings`.
        """
        raise NotImplementedError

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "Space":
        """Read and check this space's files; raise SpaceError with one sentence when they are unusable."""
        raise NotImplementedError

    def embed(self, query: Query) -> np.ndarray:
        """The query's vector in this space."""
        raise NotImplementedError

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items: ids and distances, nearest first."""
        raise NotImplementedError

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Many items' vectors at once (the evaluation and the benchmark); row i is item i."""
        raise NotImplementedError

    def format_distance(self, d: float) -> str:
        return self.distance_format.format(d) + (f" {self.unit}" if self.unit else "")


def load_npz(data: LoadInput, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A space's .npz file, with every key present, or SpaceError."""
    path = data.directory / name
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError) as e:
        raise SpaceError(f"{name} is missing or corrupt ({type(e).__name__})") from None
    return arrays


def check_rows(name: str, array: np.ndarray, items: int) -> None:
    if len(array) != items:
        raise SpaceError(f"{name} holds {len(array)} rows, meta.json says {items}")
