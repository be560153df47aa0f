"""Bits space: semantic hashing. The auto-encoder's code made binary, 256 bits (32 bytes) per
image by default, searched by exact Hamming distance.

Binarising: the codes are projected on their top principal directions (as many as bits), then
rotated by ITQ (Gong & Lazebnik 2011): the rotation that makes sign() lose the least, learned
on the collection's codes. A plain sign of the centred code keeps less (docs/quality.md).
Search: XOR with the query and count the set bits, 64 at a time (numpy's bitwise_count), over
codes stored word-major (docs/speed.md).
"""
from __future__ import annotations

from pathlib import Path

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from .. import layout
from ..knn import topk_ties_by_id
from ..pca import fit_pca
from .base import BuildInput, LoadInput, Query, Space, SpaceError, load_npz

BITS = 256  # Krizhevsky & Hinton's semantic hashing length for 32x32 images: 32 bytes per image
WIDTHS = (64, 128, 256)  # whole uint64 words
ITQ_ITERATIONS = 50  # Gong & Lazebnik: the quantisation loss has levelled off by then
ITQ_FIT_ROWS = 10_000  # fitting on all 50,000 CIFAR-10 codes gained 0.005 mAP@1000 for 5x the time (docs/quality.md)
METHODS = ("itq", "sign")
SCAN_CHUNK = 32768  # items per pass: 4 words x 32768 x 8 bytes stay in L2 between the XOR and the popcount
SCAN_THREADS = min(2, os.cpu_count() or 1)  # numpy releases the GIL in its loops: halves of the store scan in parallel
SCAN_THREADED_FROM = 200_000  # below this a thread hand-off costs more than it saves


def fit_binariser(codes: np.ndarray, bits: int = BITS, *, method: str = "itq", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection (D, bits)): bits of a code = (code - mean) @ projection > 0."""
    assert method in METHODS, f"method must be one of {METHODS}"
    codes = np.asarray(codes, dtype=np.float32)
    if method == "sign":
        assert bits == codes.shape[1], "the plain sign keeps one bit per code dimension"
        return codes.mean(0), np.eye(bits, dtype=np.float32)
    assert bits <= codes.shape[1], f"{bits} bits need a code of at least {bits} dimensions"
    pca = fit_pca(codes, bits, max_rows=ITQ_FIT_ROWS, seed=seed)
    v = pca.project(codes[np.random.default_rng(seed).permutation(len(codes))[:ITQ_FIT_ROWS]])
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
    for s in range(0, len(codes), chunk):
        bits = (np.asarray(codes[s:s + chunk], dtype=np.float32) - mean) @ projection > 0
        out[s:s + chunk] = np.packbits(bits, axis=1).view(np.uint64)
    return out


def word_major(words: np.ndarray) -> np.ndarray:
    """(N, W) -> (W, N): each 64-bit word of every item contiguous, the layout `hamming` scans."""
    return np.ascontiguousarray(np.atleast_2d(words).T)


def hamming(columns: np.ndarray, query: np.ndarray, chunk: int = SCAN_CHUNK) -> np.ndarray:
    """(W, N) word-major codes and a (W,) query -> (N,) Hamming distances.

    Word-major, in chunks that stay in cache: one XOR and one popcount pass per word over a
    contiguous run of uint64s. The row-major (N, W) sum along a 4-wide axis is 8x slower here.
    """
    out = np.empty(columns.shape[1], dtype=np.uint16)  # up to 256 + 1 values: uint8 would wrap
    for s, o in _scan(columns, query, chunk, out):
        pass
    return out


def _scan(columns: np.ndarray, query: np.ndarray, chunk: int, out: np.ndarray):
    """Fill `out` chunk by chunk, yielding (start, distances of the chunk) while they are still in cache."""
    w, n = columns.shape
    tmp = np.empty(min(chunk, n), dtype=np.uint64)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        o, t = (out[s:e] if len(out) == n else out[:e - s]), tmp[:e - s]  # whole result or one reused chunk
        for j in range(w):
            np.bitwise_xor(columns[j, s:e], query[j], out=t)
            if j == 0:
                np.bitwise_count(t, out=o, casting="unsafe")
            else:
                o += np.bitwise_count(t)
        yield s, o


def hamming_topk(columns: np.ndarray, query: np.ndarray, k: int, chunk: int = SCAN_CHUNK,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest items by Hamming distance (ids, distances), ties broken by the smaller id.

    Same answer as `topk_ties_by_id(hamming(...))` without the second pass over N distances: each
    chunk is cut to the items within the best k so far while it is in cache, so the top-k reads
    a few hundred kilobytes instead of the whole distance array. Large stores are scanned in
    `threads` contiguous parts at once and the parts' top-k merged.
    """
    n = columns.shape[1]
    threads = threads or (SCAN_THREADS if n >= SCAN_THREADED_FROM else 1)
    if threads == 1:
        return _topk_of_range(columns, query, k, chunk, 0)
    bounds = [n * i // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda i: _topk_of_range(columns[:, bounds[i]:bounds[i + 1]], query, k, chunk,
                                                       bounds[i]), range(threads)))
    ids = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    best = np.lexsort((ids, d))[:k]
    return ids[best], d[best]


def _topk_of_range(columns, query, k, chunk, offset):
    k = min(k, columns.shape[1])
    ids, d = np.empty(0, np.int64), np.empty(0, np.uint16)
    buffer = np.empty(min(chunk, columns.shape[1]), dtype=np.uint16)
    worst = np.iinfo(np.uint16).max  # the k-th best distance so far: a later item must beat it (ties go to smaller ids)
    for s, o in _scan(columns, query, chunk, buffer):
        near = np.flatnonzero(o < worst if len(ids) >= k else o <= worst)
        if len(near) == 0:
            continue
        ids = np.concatenate([ids, near + (s + offset)])
        d = np.concatenate([d, o[near]])
        if len(ids) >= k:
            keep = topk_ties_by_id(d, k)  # ids ascend within d, so ties still go to the smaller id
            ids, d = ids[keep], d[keep]
            order = np.argsort(ids, kind="stable")
            ids, d = ids[order], d[order]
            worst = int(d.max())
    order = np.lexsort((ids, d))
    return ids[order], d[order]


class BitsSpace(Space):
    name = "bits"
    title = "Bits space"
    metric = "hamming"
    unit = "bits"
    distance_format = "{:.0f}"

    def __init__(self, columns: np.ndarray, mean: np.ndarray, projection: np.ndarray):
        self.columns = columns  # (bits / 64, N) uint64: column i is item i
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

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, d = hamming_topk(self.columns, vector, k)
        return ids, d.astype(np.float32)
