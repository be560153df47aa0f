"""2-D maps of a collection: where each image sits in code space, and in pixel space.

t-SNE separates classes far better than PCA, but on all 50,000 points it costs minutes on two
cores. So t-SNE lays out a random sample of landmarks, and every other point is placed at the
similarity-weighted mean of its nearest landmarks (in the same space the map shows). Every
image is a point; the layout costs seconds, inside the index build's budget.
"""
from __future__ import annotations

import numpy as np
import torch

from .pca import fit_pca

LANDMARKS = 2000  # t-SNE cost grows ~n log n; 2,000 points take a few seconds here
NEIGHBOURS = 8  # landmarks averaged to place each other point
PIXEL_PCA = 64  # pixels are reduced to this many components before the map is made
# t-SNE needs more points than its perplexity (2 at least here), and a handful of points it only
# scatters; PCA shows their real distances. Landmarks that are all the same point are also laid
# out by PCA: t-SNE's PCA start divides by their zero spread, and the NaNs crash its native code.
MIN_TSNE = 10


def _normalise(x: np.ndarray, chunk: int = 65536) -> torch.Tensor:
    """Centred, unit-length rows as one float32 tensor, filled chunk by chunk: x may be a read-only
    memory map of a million rows, which must not be copied whole more than once."""
    mean = sum(np.asarray(x[s:s + chunk], dtype=np.float64).sum(0) for s in range(0, len(x), chunk)) / max(len(x), 1)
    out = torch.empty(x.shape, dtype=torch.float32)
    for s in range(0, len(x), chunk):
        block = torch.from_numpy(np.asarray(x[s:s + chunk], dtype=np.float64) - mean).float()
        out[s:s + chunk] = torch.nn.functional.normalize(block, dim=1)
    return out


def landmark_tsne(features: np.ndarray, *, landmarks: int = LANDMARKS, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) float32, with cosine similarity as the notion of closeness."""
    from sklearn.manifold import TSNE

    n = len(features)
    x = _normalise(features)
    rng = np.random.default_rng(seed)
    marks = np.sort(rng.choice(n, min(landmarks, n), replace=False))
    if len(marks) < MIN_TSNE or bool((x[marks] == x[marks[0]]).all()):
        return _pca_layout(x)
    perplexity = float(min(30, max(2, (len(marks) - 1) / 3)))
    layout = TSNE(2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed,
                  max_iter=500).fit_transform(x[marks].numpy()).astype(np.float32)
    out = np.empty((n, 2), dtype=np.float32)
    out[marks] = layout
    rest = np.setdiff1d(np.arange(n), marks)
    out[rest] = place_among(x[rest], x[marks], layout)
    return out


def place_among(x: torch.Tensor, marks: torch.Tensor, marks_xy: np.ndarray) -> np.ndarray:
    """(n, 2): each row of x (unit length) at the similarity-weighted mean of its nearest landmarks' places."""
    out = np.empty((len(x), 2), dtype=np.float32)
    k = min(NEIGHBOURS, len(marks))
    for s in range(0, len(x), 4096):
        sim, idx = torch.topk(x[s:s + 4096] @ marks.T, k, dim=1)
        w = torch.softmax(sim / 0.05, dim=1).numpy()  # sharp: a point sits near its closest landmarks
        out[s:s + 4096] = (w[..., None] * marks_xy[idx.numpy()]).sum(1)
    return out


def extend_maps(old_maps: dict[str, np.ndarray], kept_old: np.ndarray, codes: np.ndarray, pixels: np.ndarray,
                seed: int = 0) -> dict[str, np.ndarray]:
    """An update's maps: rows 0 ... kept - 1 are the previous build's items `kept_old` and keep their
    places (a person who knew the map still finds their way); each new row is placed among a seeded
    sample of kept items, as the landmark layout places its non-landmarks."""
    kept, n = len(kept_old), len(codes)
    out = {space: np.empty((n, 2), dtype=np.float32) for space in old_maps}
    for space in out:
        out[space][:kept] = old_maps[space][kept_old]
    if n == kept:
        return out
    marks = np.sort(np.random.default_rng(seed).choice(kept, min(LANDMARKS, kept), replace=False))
    rows = np.concatenate([marks, np.arange(kept, n)])  # the landmarks and the new items, sorted: a memory map reads forward
    features = {"code": codes[rows], "pixel": pixel_features(pixels[rows], seed=seed)}
    for space in out:
        x = _normalise(features[space])  # centred on these rows alone: only their directions are compared
        out[space][kept:] = place_among(x[len(marks):], x[:len(marks)], out[space][marks])
    return out


def _pca_layout(x: torch.Tensor) -> np.ndarray:
    """The first two principal components: exact for a few points, all zeros for one."""
    centred = x - x.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    out = np.zeros((len(x), 2), dtype=np.float32)
    k = min(2, len(v))  # fewer components than two when there are fewer points or dimensions
    out[:, :k] = (centred @ v[:k].T).numpy()
    return out


def pixel_features(pixels: np.ndarray, n_components: int = PIXEL_PCA, fit_rows: int = 10000, seed: int = 0) -> np.ndarray:
    """Pixels reduced by PCA (fitted on a sample), so the pixel map is cheap; the map normalises
    the scale away."""
    return fit_pca(pixels, n_components, max_rows=fit_rows, seed=seed).project(pixels)


def collection_maps(codes: np.ndarray, pixels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The two maps stored with an index: row i is item i."""
    return {"code": landmark_tsne(codes, seed=seed), "pixel": landmark_tsne(pixel_features(pixels, seed=seed), seed=seed)}
