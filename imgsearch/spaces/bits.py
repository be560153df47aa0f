"""Bits space: semantic hashing. The auto-encoder's code made binary, 256 bits (32 bytes) per
image by default, searched by exact Hamming distance.

Binarising: ITQ on the codes' principal directions (spaces/hashing.py). Search: exact Hamming
distance, a popcount of the XOR with the query, by faiss's binary flat index (`HammingScan`;
docs/speed.md says why not numpy), or by a Milvus collection (`--backend milvus`, spaces/milvus.py,
found by name in spaces/backends.py).
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .. import layout
from .backends import BITS_BACKENDS
from .base import BuildInput, LoadInput, Query, Space, SpaceError, load_npz
from .hashing import BITS, ITQ_ITERATIONS, WIDTHS, binarise, bit_width, fit_binariser, word_major

__all__ = ["BITS", "WIDTHS", "BitsSpace", "HammingScan", "binarise", "fit_binariser", "word_major"]
LOCAL = "local"  # the bits in this index's own bits.npz, searched in this process


class HammingScan:
    """Exact Hamming top-k over packed codes: faiss's binary flat index, one popcount loop in C++.

    It reads each code once and counts in registers, where numpy needs an XOR, a count and an add
    per word, each a pass through memory: at 1M x 256 bits 2.5-3.8 ms here at every SIMD level
    faiss can pick, including none, against 8-9 ms for numpy's best chunked scan (docs/speed.md).
    Ties go to the smaller id, as `topk_ties_by_id` breaks them (tests/test_spaces.py checks it).
    """

    def __init__(self, columns: np.ndarray):
        self.columns = columns  # (bits / 64, N) uint64: column i is item i
        self.index = faiss.IndexBinaryFlat(64 * len(columns))
        self.index.add(rows_as_bytes(np.asarray(columns).T))

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(W,) or (Q, W) uint64 queries -> ids and Hamming distances, (k,) or (Q, k), nearest first;
        `rows`: sorted ids of the only items considered (faiss skips the others by a bitmap as it scans)."""
        single = np.ndim(queries) == 1
        queries = rows_as_bytes(np.atleast_2d(queries))
        k = min(k, self.index.ntotal if rows is None else len(rows))
        if k == 0:
            ids, d = np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.int32)
        elif rows is None:
            d, ids = self.index.search(queries, k)
        else:
            allowed = np.zeros(self.index.ntotal, dtype=bool)
            allowed[rows] = True
            bitmap = np.packbits(allowed, bitorder="little")  # kept alive while faiss reads it
            chosen = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self.index.ntotal, faiss.swig_ptr(bitmap)))
            d, ids = self.index.search(queries, k, params=chosen)
        return (ids[0], d[0]) if single else (ids, d)


def rows_as_bytes(rows: np.ndarray) -> np.ndarray:
    """(N, W) uint64 -> (N, 8W) uint8, the byte strings faiss compares; the same bits, so the same distances."""
    return np.ascontiguousarray(rows, dtype=np.uint64).view(np.uint8)


class BitsSpace(Space):
    name = "bits"
    title = "Bits space"
    metric = "hamming"
    unit = "bits"
    distance_format = "{:.0f}"

    def __init__(self, scan, mean: np.ndarray, projection: np.ndarray, where: str = ""):
        self.scan = scan  # HammingScan over bits.npz's columns, or a backend's (a Milvus collection)
        self.mean, self.projection = mean, projection
        self.where = where  # ", in Milvus": where the bits are searched, when not in this process

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, bits: int | None = None, method: str = "itq",
              backend: str = LOCAL, uri: str | None = None) -> dict:
        if backend != LOCAL and backend not in BITS_BACKENDS:
            raise SpaceError(f"the bits space's backend is {' or '.join((LOCAL, *BITS_BACKENDS))}, not {backend!r}")
        bits = bit_width(bits, data.codes.shape[1])
        if backend != LOCAL:
            section, why_local = BITS_BACKENDS[backend].build(data, directory, uri=uri, bits=bits, method=method)
            if section is not None:
                return section
            section = cls.build(data, directory, bits=bits, method=method)
            section["settings"].update(backend=LOCAL, **{backend: why_local})
            return section
        settings = {"method": method, "itq_iterations": ITQ_ITERATIONS if method == "itq" else 0}
        reuse = data.previous and data.previous.usable_section(cls.name, len(data.codes))
        if reuse and reuse["bits"] == bits and reuse["settings"]["method"] == method:
            # An update: the previous rotation, its kept items' bits, and only the new items binarised.
            old = data.previous.load_npz(layout.BITS, ("columns", "mean", "projection"))
            mean, projection = old["mean"], old["projection"]
            new = binarise(data.codes[data.previous.kept:], mean, projection)
            columns = np.concatenate([old["columns"][:, data.previous.kept_old], word_major(new)], axis=1)
            settings["fitted_in"] = data.previous.fitted_in(reuse)
        else:
            mean, projection = fit_binariser(data.codes, bits, method=method, seed=data.seed)
            columns = word_major(binarise(data.codes, mean, projection))
        np.savez(directory / layout.BITS, columns=columns, mean=mean, projection=projection)
        return {"metric": cls.metric, "bits": bits, "bytes_per_item": bits // 8, "files": [layout.BITS],
                "settings": settings}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "BitsSpace":
        backend = section["settings"].get("backend", LOCAL)
        if backend != LOCAL:
            scan, mean, projection = BITS_BACKENDS[backend].load(data, section)
            return cls(scan, mean, projection, where=f", in {scan.title}")
        a = load_npz(data, layout.BITS, ("columns", "mean", "projection"))
        columns = a["columns"]
        if columns.ndim != 2 or columns.shape[1] != data.items:
            raise SpaceError(f"{layout.BITS} holds codes of {columns.shape[-1]} items, meta.json says {data.items}")
        if columns.dtype != np.uint64 or a["projection"].shape != (data.codes.shape[1], 64 * len(columns)):
            raise SpaceError(f"{layout.BITS} does not fit {data.codes.shape[1]}-d codes")
        return cls(HammingScan(columns), a["mean"], a["projection"])

    @property
    def bits(self) -> int:
        return self.projection.shape[1]

    @property
    def columns(self) -> np.ndarray | None:
        """(bits / 64, N) uint64, column i item i's bits; None when a backend holds them."""
        return getattr(self.scan, "columns", None)

    @property
    def description(self) -> str:
        return (f"semantic hashing: the code as {self.bits} bits ({self.bits // 8} bytes), exact Hamming "
                f"distance{self.where}")

    def embed(self, query: Query) -> np.ndarray:
        return binarise(query.code, self.mean, self.projection)[0]

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return binarise(codes, self.mean, self.projection)

    @property
    def filters_exactly(self) -> bool:
        """The local scan reads only the allowed rows; a backend's index (Milvus) is asked for more instead."""
        return getattr(self.scan, "filters_exactly", True)

    def search(self, vector: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, d = self.scan.search(vector, k) if rows is None else self.scan.search(vector, k, rows)
        return ids.astype(np.int64), d.astype(np.float32)
