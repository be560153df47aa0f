"""Near-duplicates: every pair of items within a threshold in one space, grouped.

    found = find_duplicates(index, space="bits", threshold=DEFAULT_THRESHOLDS["bits"])
    for group in found.groups: print(group.keep, [item.name for item in group.items])

Pairs within the threshold are the edges of a graph; its connected components (two or more
items) are the groups, largest first. Each group suggests the item to keep: the most pixels,
then the largest file, then the oldest. Nothing here deletes, moves or writes a file: files
are only stat()ed and their headers read for their dimensions.

The pair search reads little: in the bits space faiss's binary range search (a popcount scan
of the collection per block of queries, in C++); in the code and pixel spaces a range search
over short [projection, residual] rows, whose distance is a lower bound of the true one (the
pixel space's search uses the same bound), and then the true distance of the few candidates.
Milvus-backed indexes are searched the same way: the codes, the pixels and the bits' rotation
live in the index directory, so no server is asked.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .pca import fit_pca
from .spaces.bits import rows_as_bytes
from .spaces.hashing import binarise
from .spaces.vectors import unit_rows

SPACES = ("bits", "code", "pixel")
UNITS = {"bits": "bits", "code": "angular distance", "pixel": "Euclidean distance on [0, 1] pixels"}
# Each space's threshold and the default space are the ones `imgsearch benchmark --duplicates` picked:
# the largest F1 on its calibration set (docs/duplicates.json: "threshold", "calibration_f1" and "default";
# the measured figures in docs/duplicates.md).
DEFAULT_THRESHOLDS = {"bits": 19, "code": 0.48, "pixel": 4.6}
DEFAULT_SPACE = "code"
SLIDERS = {"bits": (0, 64, 1), "code": (0.0, 1.0, 0.01), "pixel": (0.0, 8.0, 0.1)}  # the page's threshold ranges
QUERY_BLOCK = 4096  # queries per range search: bounded memory for the result lists
BOUND_DIMS = 32  # the code space's lower bound: 32 principal directions of the unit codes and the residual
SLACK = 1e-3  # float32 rounding allowance of the lower bounds, a share of the radius


class DuplicatesError(ValueError):
    """A bad space or threshold; the message is one sentence for the user."""


@dataclass
class Item:
    id: int
    path: str | None
    name: str | None  # the path relative to the collection's folder; None without a file
    bytes: int | None
    width: int | None
    height: int | None
    distance_to_keep: float
    mtime: float | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("mtime")
        return d


@dataclass
class Group:
    keep: int
    items: list[Item]  # the keeper first, then by distance to it

    def to_dict(self) -> dict:
        return {"keep": self.keep, "items": [item.to_dict() for item in self.items]}


@dataclass
class Duplicates:
    space: str
    threshold: float
    items: int  # items searched
    pairs: int  # pairs within the threshold
    seconds: float
    groups: list[Group]

    def to_dict(self) -> dict:
        return {"space": self.space, "threshold": self.threshold, "items": self.items, "pairs": self.pairs,
                "seconds": self.seconds, "groups": [g.to_dict() for g in self.groups]}

    def rows(self) -> list[dict]:
        """One row per item of a group, for a CSV: the group's number, whether it is the keeper, the item."""
        return [{"group": n, "keep": item.id == g.keep, **item.to_dict()}
                for n, g in enumerate(self.groups, 1) for item in g.items]


CSV_FIELDS = ("group", "keep", "id", "path", "name", "bytes", "width", "height", "distance_to_keep")


def check(space: str, threshold) -> float:
    if space not in SPACES:
        raise DuplicatesError(f"The space must be one of {', '.join(SPACES)}, not {space!r}.")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise DuplicatesError(f"The threshold must be a number, not {threshold!r}.") from None
    if not np.isfinite(t) or t < 0:
        raise DuplicatesError(f"The threshold must be a number of at least 0, not {threshold!r}.")
    if space == "bits" and t != int(t):
        raise DuplicatesError(f"The bits space's threshold is a whole number of bits, not {threshold!r}.")
    return int(t) if space == "bits" else t


# ---- pairs ---------------------------------------------------------------------------------

def bit_pairs(words: np.ndarray, radius: int, progress=None, queries=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, W) uint64 packed codes -> pairs i < j with Hamming distance <= radius: i, j, distance
    (with `queries`: the distance of query i to row j)."""
    data = rows_as_bytes(words)
    q = None if queries is None else rows_as_bytes(queries)
    # faiss keeps distances strictly below its radius
    return _range_pairs(lambda: faiss.IndexBinaryFlat(data.shape[1] * 8), data, int(radius) + 1, progress, q)


def bound_pairs(rows: np.ndarray, radius: float, progress=None, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of float rows within Euclidean `radius` (candidates: the radius is widened by SLACK);
    with `queries`, query i to row j."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    r2 = float(radius * (1 + SLACK)) ** 2 + 1e-12
    i, j, _ = _range_pairs(lambda: faiss.IndexFlatL2(rows.shape[1]), rows, r2, progress, queries)
    return i, j


def _range_pairs(new_index, data: np.ndarray, radius, progress, queries=None):
    """Every block of queries against the rows from its own first one on, so each pair i < j is compared
    once: row i itself, or with `queries` its mirror image (row i of `queries`), against row j."""
    found_i, found_j, found_d = [], [], []
    for s in range(0, len(data), QUERY_BLOCK):
        index = new_index()
        index.add(data[s:])
        lims, d, ids = index.range_search((data if queries is None else queries)[s:s + QUERY_BLOCK], radius)
        rows = np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = ids > rows  # not an item with itself, nor a pair of the block twice
        found_i.append(s + rows[keep])
        found_j.append(s + ids[keep])
        found_d.append(d[keep])
        if progress:
            progress(min(1.0, (s + QUERY_BLOCK) / len(data)))
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_d))


def with_residual(y: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """[y, r] rows: r = the length of what the projection y leaves out; ||[y, r] - [y', r']|| <= the true distance."""
    r = np.sqrt(np.maximum(totals - np.einsum("ij,ij->i", y, y, dtype=np.float64), 0.0))
    return np.hstack([y, r[:, None]]).astype(np.float32)


class SpaceVectors:
    """One space's items as the finder reads them (and, with `mirror`, their mirror images): candidate
    pairs, and exact distances of pairs. A pair's distance is the smaller of the two images' own and
    that of the first one's mirror image to the other: a flipped copy is a copy."""

    def __init__(self, space: str, index, mirror: bool = True):
        self.space, self.index = space, index
        self.bits = index.spaces.get("bits")
        if space == "bits" and self.bits is None:
            raise DuplicatesError("This index has no bits space; use --space code or pixel.")
        self.pixel_space = index.spaces.get("pixel")
        self.vectors = self.embed(np.asarray(index.pixels) if space == "pixel" else None)
        self.mirrored = self.embed(mirrored_pixels(index)) if mirror else None
        self._pca = None

    def embed(self, pixels: np.ndarray | None) -> np.ndarray:
        """The space's rows of these pixels (None: the index's own items, from its stored codes)."""
        if self.space == "pixel":
            return pixels.reshape(len(pixels), -1)
        codes = self.index.codes if pixels is None else encode_blocks(self.index, pixels)
        if self.space == "code":
            return unit_rows(codes)
        columns = getattr(self.bits, "columns", None)  # absent in a Milvus-backed space: the bits from its rotation
        if pixels is None and columns is not None:
            return np.ascontiguousarray(columns.T)
        return binarise(codes, self.bits.mean, self.bits.projection)

    def pairs(self, threshold, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs i < j within `threshold`, each once, with their distance."""
        parts = [self._pairs(threshold, progress, None)]
        if self.mirrored is not None:
            parts.append(self._pairs(threshold, None, self.mirrored))
        i, j, d = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((d, j, i))  # the nearer of a pair's direct and mirrored distance first
        i, j, d = i[order], j[order], d[order]
        first = np.ones(len(i), bool)
        first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
        return i[first], j[first], d[first]

    def _pairs(self, threshold, progress, queries):
        if self.space == "bits":
            i, j, d = bit_pairs(self.vectors, threshold, progress, queries)
            return i, j, d.astype(np.float32)
        q = None if queries is None else self.bound_rows(queries)
        i, j = bound_pairs(self.bound_rows(self.vectors), self.scale * threshold, progress, q)
        d = self.distances(i, j, mirrored=queries is not None)
        keep = d <= threshold
        return i[keep], j[keep], d[keep]

    @property
    def scale(self) -> float:
        return 255.0 if self.space == "pixel" else 1.0  # pixel rows are uint8

    def bound_rows(self, rows: np.ndarray) -> np.ndarray:
        """[y, r] rows over a PCA fitted once on the items (the pixel space's own basis where it has one)."""
        if self._pca is None:
            ps = self.pixel_space
            if self.space == "pixel" and ps is not None and hasattr(ps, "basis"):
                self._pca = ps.mean, ps.basis[:, :ps.coarse_dims]
            else:
                pca = fit_pca(self.vectors, BOUND_DIMS, max_rows=20_000)
                self._pca = pca.mean, pca.components
        mean, components = self._pca
        out = []
        for s in range(0, len(rows), 8192):
            c = rows[s:s + 8192].astype(np.float32) - mean
            out.append(with_residual(c @ components, np.einsum("ij,ij->i", c, c, dtype=np.float64)))
        return np.concatenate(out) if out else np.empty((0, components.shape[1] + 1), np.float32)

    def distances(self, i: np.ndarray, j: np.ndarray, block: int = 8192, mirrored: bool = False) -> np.ndarray:
        """Exact distances of pairs (i[k], j[k]) in the space's unit (the mirror image of i[k] when `mirrored`)."""
        first = self.mirrored if mirrored else self.vectors
        out = np.empty(len(i), dtype=np.float32)
        for s in range(0, len(i), block):
            a, b = first[i[s:s + block]], self.vectors[j[s:s + block]]
            if self.space == "bits":
                out[s:s + block] = np.unpackbits(np.bitwise_xor(a, b).view(np.uint8), axis=1).sum(1)
            elif self.space == "code":
                out[s:s + block] = np.sqrt(np.maximum(2 - 2 * np.einsum("ij,ij->i", a, b), 0))
            else:
                diff = a.astype(np.int32) - b.astype(np.int32)
                out[s:s + block] = np.sqrt(np.einsum("ij,ij->i", diff, diff)) / 255.0
        return out

    def distance_to(self, keep: int, others: np.ndarray) -> np.ndarray:
        """Each of `others`' distance to `keep`, the nearer of direct and mirrored."""
        d = self.distances(np.full(len(others), keep), others)
        if self.mirrored is not None:
            d = np.minimum(d, self.distances(np.full(len(others), keep), others, mirrored=True))
        return d


def mirrored_pixels(index) -> np.ndarray:
    """The items' 32x32 pixels flipped left to right."""
    return np.asarray(index.pixels)[:, :, ::-1]


def encode_blocks(index, pixels: np.ndarray, block: int = 8192) -> np.ndarray:
    """Codes of many images, a block at a time (a flipped copy of a million images would be 3 GB)."""
    return np.concatenate([index.encode(np.ascontiguousarray(pixels[s:s + block]))
                           for s in range(0, len(pixels), block)])


# ---- groups --------------------------------------------------------------------------------

def component_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) the connected component of each item in the graph of the pairs (i, j)."""
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components of two or more items, largest first (ties: smallest first id)."""
    labels = component_labels(n, i, j)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [g for g in np.split(order, cuts) if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), int(g[0])))


def collection_root(index) -> str | None:
    spec = index.meta.get("collection")
    return spec if spec and os.path.isdir(spec) else None


def describe(index, i: int, root: str | None) -> Item:
    """An item's file: size and modification time from stat(), dimensions from the header (not decoded)."""
    path = index.paths[i]
    item = Item(int(i), path, None, None, None, None, 0.0)
    if not path:
        return item
    item.name = os.path.relpath(path, root) if root and Path(path).is_relative_to(root) else Path(path).name
    try:
        st = os.stat(path)
        item.bytes, item.mtime = st.st_size, st.st_mtime
        with Image.open(path) as im:  # reads the header only
            item.width, item.height = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        pass  # gone or unreadable since the build: the item is still reported, without those figures
    return item


def keeper(items: list[Item]) -> Item:
    """The most pixels, then the largest file, then the oldest (then the smallest id)."""
    return min(items, key=lambda it: (-(it.width or 0) * (it.height or 0), -(it.bytes or 0),
                                      it.mtime if it.mtime is not None else float("inf"), it.id))


def make_group(index, members: np.ndarray, vectors: SpaceVectors, root: str | None) -> Group:
    items = [describe(index, int(i), root) for i in members]
    keep = keeper(items)
    d = vectors.distance_to(keep.id, np.asarray(members, dtype=np.int64))
    for item, dist in zip(items, d):
        item.distance_to_keep = round(float(dist), 6)
    items.sort(key=lambda it: (it.id != keep.id, it.distance_to_keep, it.id))
    return Group(keep.id, items)


def find_duplicates(index, space: str = DEFAULT_SPACE, threshold=None, progress=None, mirror: bool = True) -> Duplicates:
    """Groups of near-duplicates in `index` (a loaded Index); `mirror=False` leaves flipped copies out.
    `progress(fraction)` is told how far the pair search is. Reads files' headers; writes, moves and
    deletes nothing."""
    threshold = check(space, DEFAULT_THRESHOLDS[space] if threshold is None and space in SPACES else threshold)
    t = time.perf_counter()
    vectors = SpaceVectors(space, index, mirror)
    i, j, _ = vectors.pairs(threshold, progress)
    root = collection_root(index)
    groups = [make_group(index, g, vectors, root) for g in components(len(index), i, j)]
    return Duplicates(space, threshold, len(index), len(i), round(time.perf_counter() - t, 3), groups)


# ---- output --------------------------------------------------------------------------------

def print_groups(found: Duplicates, file=None) -> None:
    """The groups as text: one line per item, the keeper marked with *."""
    print(f"{len(found.groups)} groups of near-duplicates ({found.pairs} pairs within {found.threshold} in the "
          f"{found.space} space) among {found.items} items, in {found.seconds:.1f} s.", file=file)
    for n, group in enumerate(found.groups, 1):
        print(f"\ngroup {n}: {len(group.items)} items, keep {group.keep}", file=file)
        for it in group.items:
            size = f"{it.width}x{it.height}" if it.width else "-"
            print(f"{'*' if it.id == group.keep else ' '} {it.id:>7} {it.distance_to_keep:>9.4g} {size:>11} "
                  f"{it.bytes if it.bytes is not None else '-':>10}  {it.name or it.path or '-'}", file=file)


def write_json(found: Duplicates, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(found.to_dict(), indent=1))


def csv_text(found: Duplicates, show_path=None) -> str:
    """The CSV of `rows()`; `show_path` rewrites each path (the page shows no server folders)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in found.rows():
        if show_path and row["path"]:
            row["path"] = show_path(row["path"])
        writer.writerow(row)
    return out.getvalue()


def write_csv(found: Duplicates, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(csv_text(found))
