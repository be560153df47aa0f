"""Bits space: semantic hashing. The auto-encoder's code made binary, 256 bits (32 bytes) per
image by default, searched by exact Hamming distance.

Binarising: the codes are projected on their top principal directions (as many as bits), then
rotated by ITQ (Gong & Lazebnik 2011): the rotation that makes sign() lose the least, learned
on the collection's codes. A plain sign of the centred code keeps less (docs/quality.md).
Search: exact Hamming distance, a popcount of the XOR with the query, by faiss's binary flat
index (`HammingScan`; docs/speed.md says why not numpy).
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from .. import layout, tables
from ..pca import fit_pca
from .base import BuildInput, LoadInput, Query, Space, SpaceError, load_npz

BITS = 256  # Krizhevsky & Hinton's semantic hashing length for 32x32 images: 32 bytes per image
WIDTHS = (64, 128, 256)  # whole uint64 words
ITQ_ITERATIONS = 50  # Gong & Lazebnik: the quantisation loss has levelled off by then
ITQ_FIT_ROWS = 10_000  # fitting on all 50,000 CIFAR-10 codes gained 0.005 mAP@1000 for 5x the time (docs/quality.md)
METHODS = ("itq", "sign")


def fit_binariser(codes: np.ndarray, bits: int = BITS, *, method: str = "itq", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection (D, bits)): bits of a code = (code - mean) @ projection > 0."""
    assert method in METHODS, f"method must be one of {METHODS}"
    codes = np.asarray(codes, dtype=np.float32)
    if method == "sign":
        assert bits == codes.shape[1], "the plain sign keeps one bit per code dimension"
        return codes.mean(0), np.eye(bits, dtype=np.float32)
    assert bits <= codes.shape[1], f"{bits} bits need a code of at least {bits} dimensions"
    pca = fit_pca(codes, bits, max_rows=ITQ_FIT_ROWS, seed=seed)
    # tables.gather: plain fancy indexing of a memory-mapped store maps the folio around every row read,
    # most of a million codes' 1 GB (the peak of a million build, 2,040 MB, until it read this way)
    v = pca.project(tables.gather(codes, np.random.default_rng(seed).permutation(len(codes))[:ITQ_FIT_ROWS]))
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((bits, bits)))[0].astype(np.float32)
    # One BLAS thread: these products are small, and OpenBLAS's spinning threads made the loop
    # 30x slower (98 s instead of 3 s) while a training run shared the two cores.
    with threadpool_limits(1, user_api="blas"):
        for _ in range(ITQ_ITERATIONS):  # float32 throughout: a float64 rotation would copy v on every product
            b = np.where(v @ rotation >= 0, np.float32(1), np.float32(-1))
            u, _, wt = np.linalg.svd(v.T @ b)  # orthogonal Procrustes: the rotation closest to the current bits
            rotation = (u @ wt).astype(np.float32)
    return pca.mean, (pca.components @ rotation).astype(np.float32)


def binarise(codes: np.ndarray, mean: np.ndarray, projection: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(N, D) codes -> (N, bits / 64) uint64 words, bit j = projection j is positive; in chunks, so a
    million memory-mapped codes are never copied whole as floats."""
    codes = np.atleast_2d(codes)
    out = np.empty((len(codes), projection.shape[1] // 64), dtype=np.uint64)
    for s, rows in tables.row_blocks(codes, chunk):
        bits = (np.asarray(rows, dtype=np.float32) - mean) @ projection > 0
        out[s:s + chunk] = np.packbits(bits, axis=1).view(np.uint64)
    return out


def word_major(words: np.ndarray) -> np.ndarray:
    """(N, W) -> (W, N): each 64-bit word of every item contiguous, the layout bits.npz stores."""
    return np.ascontiguousarray(np.atleast_2d(words).T)


class HammingScan:
    """Exact Hamming top-k over packed codes: faiss's binary flat index, one popcount loop in C++.

    It reads each code once and counts in registers, where numpy needs an XOR, a count and an add
    per word, each a pass through memory: at 1M x 256 bits 2.5-3.8 ms here at every SIMD level
    faiss can pick, including none, against 8-9 ms for numpy's best chunked scan (docs/speed.md).
    Ties go to the smaller id, as `topk_ties_by_id` breaks them (tests/test_spaces.py checks it).
    """

    def __init__(self, columns: np.ndarray):
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

    def __init__(self, columns: np.ndarray, mean: np.ndarray, projection: np.ndarray):
        self.columns = columns  # (bits / 64, N) uint64: column i is item i
        self.scan = HammingScan(columns)
        self.mean, self.projection = mean, projection

    @classmethod
    def build(cls, data: BuildInput, directory: Path, *, bits: int | None = None, method: str = "itq",
              backend: str = "local", uri: str | None = None) -> dict:
        if backend == "milvus":  # a Milvus collection on a server; Milvus Lite has no binary vectors (spaces/milvus.py)
            from .milvus import LITE_BITS, build_bits
            section = build_bits(data, directory, uri=uri, bits=bits, method=method)
            if section is not None:
                return section
            section = cls.build(data, directory, bits=bits, method=method)
            section["settings"].update(backend="local", milvus=LITE_BITS)
            return section
        if backend != "local":
            raise SpaceError(f"the bits space's backend is local or milvus, not {backend!r}")
        if bits is None:  # BITS, or as many whole words as a shorter code fills
            bits = max([w for w in WIDTHS if w <= min(BITS, data.codes.shape[1])], default=WIDTHS[0])
        if bits not in WIDTHS:
            raise SpaceError(f"--bits must be one of {', '.join(map(str, WIDTHS))}, not {bits}")
        if bits > data.codes.shape[1]:
            raise SpaceError(f"{bits} bits need a code of at least {bits} dimensions; the model's has "
                             f"{data.codes.shape[1]}")
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
        if section["settings"].get("backend") == "milvus":
            from .milvus import MilvusBitsSpace
            return MilvusBitsSpace.load(data, section)
        a = load_npz(data, layout.BITS, ("columns", "mean", "projection"))
        columns = a["columns"]
        if columns.ndim != 2 or columns.shape[1] != data.items:
            raise SpaceError(f"{layout.BITS} holds codes of {columns.shape[-1]} items, meta.json says {data.items}")
        if columns.dtype != np.uint64 or a["projection"].shape != (data.codes.shape[1], 64 * len(columns)):
            raise SpaceError(f"{layout.BITS} does not fit {data.codes.shape[1]}-d codes")
        return cls(columns, a["mean"], a["projection"])

    @property
    def bits(self) -> int:
        return 64 * len(self.columns)

    @property
    def description(self) -> str:
        return f"semantic hashing: the code as {self.bits} bits ({self.bits // 8} bytes), exact Hamming distance"

    def embed(self, query: Query) -> np.ndarray:
        return binarise(query.code, self.mean, self.projection)[0]

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return binarise(codes, self.mean, self.projection)

    filters_exactly = True

    def search(self, vector: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids, d = self.scan.search(vector, k, rows)
        return ids.astype(np.int64), d.astype(np.float32)
