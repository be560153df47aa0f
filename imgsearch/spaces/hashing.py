"""Semantic hashing: the auto-encoder's code made binary. What the bits space (spaces/bits.py) and its
Milvus store (spaces/milvus.py) share: the bit widths, the fitted binariser, and the packing.

Binarising: the codes are projected on their top principal directions (as many as bits), then
rotated by ITQ (Gong & Lazebnik 2011): the rotation that makes sign() lose the least, learned
on the collection's codes. A plain sign of the centred code keeps less (docs/quality.md).
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .. import tables
from ..pca import fit_pca
from .base import SpaceError

BITS = 256  # Krizhevsky & Hinton's semantic hashing length for 32x32 images: 32 bytes per image
WIDTHS = (64, 128, 256)  # whole uint64 words
ITQ_ITERATIONS = 50  # Gong & Lazebnik: the quantisation loss has levelled off by then
ITQ_FIT_ROWS = 10_000  # fitting on all 50,000 CIFAR-10 codes gained 0.005 mAP@1000 for 5x the time (docs/quality.md)
METHODS = ("itq", "sign")


def fit_binariser(codes: np.ndarray, bits: int = BITS, *, method: str = "itq", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection (D, bits)): bits of a code = (code - mean) @ projection > 0."""
    if method not in METHODS:
        raise ValueError(f"the binarising method is {' or '.join(METHODS)}, not {method!r}")
    codes = np.asarray(codes, dtype=np.float32)
    if method == "sign":
        if bits != codes.shape[1]:
            raise ValueError("the plain sign keeps one bit per code dimension")
        return codes.mean(0), np.eye(bits, dtype=np.float32)
    if bits > codes.shape[1]:
        raise ValueError(f"{bits} bits need a code of at least {bits} dimensions")
    pca = fit_pca(codes, bits, max_rows=ITQ_FIT_ROWS, seed=seed)
    # tables.gather: plain fancy indexing of a memory-mapped store maps the folio around every row read,
    # most of a million codes' 1 GB (a million build's peak was 2,040 MB read that way)
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


def bit_width(bits: int | None, code_dim: int) -> int:
    """The bits space's width: `bits` checked, or by default BITS, or as many whole words as a shorter code fills."""
    if bits is None:
        bits = max([w for w in WIDTHS if w <= min(BITS, code_dim)], default=WIDTHS[0])
    if bits not in WIDTHS:
        raise SpaceError(f"--bits must be one of {', '.join(map(str, WIDTHS))}, not {bits}")
    if bits > code_dim:
        raise SpaceError(f"{bits} bits need a code of at least {bits} dimensions; the model's has {code_dim}")
    return bits
