"""What every search space is: a name, a metric, how it embeds a query, how it builds and
reads its files in the index directory, and `search(vector, k) -> ids, distances`.

A space is built once per index from the collection (`BuildInput`) and loaded by `Index.load`
(`LoadInput` hands it the files every space shares, so none is read twice).
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator

import numpy as np

from .. import layout, tables
from ..pca import PCA, fit_pca

PIXEL_PCA_COMPONENTS = 256  # the pca space's length (the code's), and the pixel bound uses its first few
PCA_FIT_ROWS = 20_000  # a seeded sample fits the components as well as the whole collection, in seconds
# An update keeps what the previous build fitted (PCA, ITQ) while at least this share of its items were in
# the fitted collection: the fit was made on a sample anyway, and a few new images do not move it.
REFIT_BELOW_SHARE = 0.5


@dataclass
class Reuse:
    """For `build-index --update`: the previous build, and where its kept items are now.

    Rows 0 ... kept - 1 of the new build are the previous build's items `kept_old`, in that order;
    the rows after them are new. A space may carry over what it fitted (a PCA, a rotation, Annoy's
    trees) and its kept rows, and compute only the new rows, instead of building from scratch.
    """
    directory: Path  # the previous build
    meta: dict  # its meta.json
    kept_old: np.ndarray  # (kept,) int64: old ids of the kept items, in new-row order
    check: Callable[[str], None] = lambda name: None  # raises when a file differs from its recorded checksum

    @property
    def kept(self) -> int:
        return len(self.kept_old)

    def section(self, name: str) -> dict | None:
        """The previous build's meta.json section of space `name`, or None when it had none."""
        return self.meta["spaces"].get(name)

    def load_npz(self, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """A file of the previous build, checked against its recorded checksum first."""
        self.check(name)
        return load_npz(LoadInput(self.directory, self.meta["items"], None, None), name, keys)

    def load_npy(self, name: str) -> np.ndarray:
        self.check(name)
        try:
            return np.load(self.directory / name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SpaceError(f"{name} of the previous build is missing or corrupt ({type(e).__name__})") from None

    def usable_section(self, name: str, items: int) -> dict | None:
        """The previous section of space `name` when this build may carry it over: the space was built
        locally (a Milvus collection is rebuilt), and most of the new build's items were in it."""
        section = self.section(name)
        if section is None or section["settings"].get("backend") == "milvus":
            return None
        return section if self.kept >= REFIT_BELOW_SHARE * items else None

    def maps(self, items: int) -> dict[str, np.ndarray] | None:
        """The previous build's 2-D maps (space -> (old items, 2)), when it has them and most items are kept."""
        names = {space: layout.map_file(space) for space in ("code", "pixel")}
        if self.kept < REFIT_BELOW_SHARE * items or not all(n in self.meta["checksums"] for n in names.values()):
            return None
        return {space: self.load_npy(name) for space, name in names.items()}

    def fitted_in(self, section: dict) -> str:
        """The build that fitted what a carried-over section holds (recorded as settings["fitted_in"])."""
        return section["settings"].get("fitted_in") or self.directory.name

    def carried(self, old: tuple[np.ndarray, ...],
                new: Iterable[tuple[np.ndarray, ...]]) -> Iterator[tuple[np.ndarray, ...]]:
        """Blocks of rows of the new build's per-item tables: the kept items' rows of the previous
        build's tables `old` (memory-mapped), then the `new` items' blocks. A block at a time, so no
        million-row table is ever held whole, let alone twice."""
        for s in range(0, self.kept, tables.BLOCK_ROWS):
            rows = self.kept_old[s:s + tables.BLOCK_ROWS]
            yield tuple(table[rows] for table in old)
            tables.let_go(*old)
        yield from new


@dataclass
class BuildInput:
    """The collection as the spaces see it at build time; row i is item i."""
    pixels: np.ndarray  # (N, 32, 32, 3) uint8
    codes: np.ndarray  # (N, code_dim) float32: the auto-encoder's codes
    seed: int = 0
    options: dict = field(default_factory=dict)  # space name -> keyword options (n_trees, bits, ...)
    previous: Reuse | None = None  # an update's previous build, whose work a space may carry over
    scratch: Path | None = None  # a folder for tables that outgrow memory (pixel_projection); None: in memory

    @cached_property
    def pixel_pca(self) -> PCA:
        """One PCA of the pixels for every space that needs one (pca, the pixel bound)."""
        return fit_pca(self.pixels, PIXEL_PCA_COMPONENTS, max_rows=PCA_FIT_ROWS, seed=self.seed)

    @cached_property
    def pixel_projection(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image on `pixel_pca`'s components, (N, components) float32 in 0-255 pixel units, and
        its squared distance from their mean, (N,) float64. The pca space, the pixel bound and the
        pixel map all need these: one pass over the pixels (3 GB at a million) instead of one each.
        Row for row what `pixel_pca.project` gives, bit for bit."""
        pca, n = self.pixel_pca, len(self.pixels)
        blocks = projection_blocks(self.pixels, pca.mean, pca.components)
        if self.scratch is None:
            projected, totals = np.empty((n, pca.n_components), dtype=np.float32), np.empty(n)
            s = 0
            for y, total in blocks:
                projected[s:s + len(y)], totals[s:s + len(y)] = y, total
                s += len(y)
            return projected, totals
        paths = self.scratch / "pixel_projection.npy", self.scratch / "pixel_totals.npy"
        writers = (tables.NpyWriter(paths[0], (n, pca.n_components), np.float32),
                   tables.NpyWriter(paths[1], (n,), np.float64))
        for y, total in blocks:
            writers[0].write(y)
            writers[1].write(total)
        for w in writers:
            w.close()
        return np.load(paths[0], mmap_mode="r"), np.load(paths[1], mmap_mode="r")

    def pixel_projection_if_made(self) -> np.ndarray | None:
        """pixel_projection's table if a space has made it already, else None (nothing is computed)."""
        return self.__dict__["pixel_projection"][0] if "pixel_projection" in self.__dict__ else None


def projection_blocks(pixels: np.ndarray, mean: np.ndarray, components: np.ndarray):
    """(y, total) for blocks of images: y = (x - mean) @ components in float32 (x - mean rounded to
    float32 first, as `PCA.project` rounds it), and total = ||x - mean||^2 in float64."""
    flat = pixels.reshape(len(pixels), components.shape[0])
    components = np.asarray(components, dtype=np.float32)
    for _, rows in tables.row_blocks(flat, tables.CACHE_ROWS):
        c = rows.astype(np.float64) - mean
        yield c.astype(np.float32) @ components, np.einsum("ij,ij->i", c, c)


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
    # True when most of the build runs on one core (Annoy's tree build): build_index then builds this space
    # in a thread beside the other spaces and the maps, which keep the other core busy.
    builds_beside: ClassVar[bool] = False
    # True when `search` takes `rows=` (sorted allowed item ids) and scans only those: a folder or class
    # filter then costs less than a full search. Other spaces are asked for more neighbours instead (search.py).
    filters_exactly: ClassVar[bool] = False

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
        """The k nearest items: ids and distances, nearest first (a space that `filters_exactly` also takes
        `rows=`, sorted item ids, and returns the k nearest of those only)."""
        raise NotImplementedError

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Many items' vectors at once (the evaluation and the benchmark); row i is item i."""
        raise NotImplementedError

    def format_distance(self, d: float) -> str:
        return self.distance_format.format(d) + (f" {self.unit}" if self.unit else "")


def load_npz(data: LoadInput, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A space's .npz file, with every key present, or SpaceError.

    Its arrays are memory-mapped where they lie uncompressed in the file (as np.savez writes them):
    at a million items the tables are gigabytes, which a load would otherwise read and copy into
    each process (about 3 s here) instead of sharing the page cache.
    """
    path = data.directory / name
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            return {k: _member(archive, raw, members[k], path) for k in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise SpaceError(f"{name} is missing or corrupt ({type(e).__name__})") from None


def _member(archive: zipfile.ZipFile, raw, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One .npy member of an .npz archive: a read-only memory map when it is stored, else read whole."""
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    raw.seek(info.header_offset)
    local = raw.read(30)  # the member's local header: its name and extra field come before the data
    if local[:4] != b"PK\x03\x04":
        raise ValueError("not a zip member header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    raw.seek(start)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(raw))
    shape, fortran, dtype = read_header(raw) if read_header else ((), False, None)
    if read_header is None or not shape or 0 in shape or dtype.hasobject:  # nothing worth mapping, or refused
        raw.seek(start)
        return np.lib.format.read_array(raw, allow_pickle=False)
    # A plain ndarray view of the map (np.asarray drops the memmap subclass, not the mapping).
    return np.asarray(np.memmap(path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape,
                                order="F" if fortran else "C"))


def check_rows(name: str, array: np.ndarray, items: int) -> None:
    if len(array) != items:
        raise SpaceError(f"{name} holds {len(array)} rows, meta.json says {items}")
