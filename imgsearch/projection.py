"""2-D maps of a collection: where each image sits in code space, and in pixel space.

t-SNE separates classes far better than PCA, but on all 50,000 points it costs minutes on two
cores. So t-SNE lays out a random sample of landmarks, and every other point is placed at the
similarity-weighted mean of its nearest landmarks (in the same space the map shows). Every
image is a point; the layout costs seconds, inside the index build's budget.
"""
from __future__ import annotations

import numpy as np
import torch

from . import tables
from .pca import fit_pca

LANDMARKS = 2000  # t-SNE cost grows ~n log n; 2,000 points take a few seconds here
NEIGHBOURS = 8  # landmarks averaged to place each other point
PIXEL_PCA = 64  # pixels are reduced to this many components before the map is made
# t-SNE needs more points than its perplexity (2 at least here), and a handful of points it only
# scatters; PCA shows their real distances. Landmarks that are all the same point are also laid
# out by PCA: t-SNE's PCA start divides by their zero spread, and the NaNs crash its native code.
MIN_TSNE = 10
# Points normalised and placed at once: 8,192 codes as float64 (16 MB) stay near the cores, where
# 65,536 (128 MB) took twice as long to normalise, whatever the collection's size.
PLACE_ROWS = 8192


def _mean(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The mean row, summed chunk by chunk in float64: x may be a read-only memory map of a million rows."""
    return sum(np.asarray(rows, dtype=np.float64).sum(0) for _, rows in tables.row_blocks(x, chunk)) / max(len(x), 1)


def _unit(x: np.ndarray, mean: np.ndarray) -> torch.Tensor:
    """Rows centred on `mean` and scaled to unit length, float32."""
    return torch.nn.functional.normalize(torch.from_numpy(np.asarray(x, dtype=np.float64) - mean).float(), dim=1)


def _normalise(x: np.ndarray) -> torch.Tensor:
    """All rows centred and unit-length, as one tensor: for the few rows of an update or a tiny collection."""
    return _unit(x, _mean(x))


def landmark_tsne(features: np.ndarray, *, landmarks: int = LANDMARKS, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) float32, with cosine similarity as the notion of closeness.

    Only the landmarks are held as unit rows; the other points are normalised and placed a block at a
    time, so a million codes are read once more rather than copied (two gigabytes at 256 floats each).
    """
    from sklearn.manifold import TSNE

    n = len(features)
    mean = _mean(features)
    rng = np.random.default_rng(seed)
    marks = np.sort(rng.choice(n, min(landmarks, n), replace=False))
    x_marks = _unit(tables.gather(features, marks), mean)
    if len(marks) < MIN_TSNE or bool((x_marks == x_marks[0]).all()):
        return _pca_layout(_unit(features, mean))
    perplexity = float(min(30, max(2, (len(marks) - 1) / 3)))
    layout = TSNE(2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed,
                  max_iter=500).fit_transform(x_marks.numpy()).astype(np.float32)
    out = np.empty((n, 2), dtype=np.float32)
    out[marks] = layout
    is_mark = np.zeros(n, dtype=bool)
    is_mark[marks] = True
    for s, block in tables.row_blocks(features, PLACE_ROWS):
        rest = np.flatnonzero(~is_mark[s:s + len(block)])
        out[s + rest] = place_among(_unit(block[rest], mean), x_marks, layout)
    return out


def place_among(x: torch.Tensor, marks: torch.Tensor, marks_xy: np.ndarray) -> np.ndarray:
    """(n, 2): each row of x (unit length) at the similarity-weighted mean of its nearest landmarks' places."""
    out = np.empty((len(x), 2), dtype=np.float32)
    k = min(NEIGHBOURS, len(marks))
    for s in range(0, len(x), 4096):  # 4096 x 2,000 similarities at a time: 32 MB
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
    features = {"code": tables.gather(codes, rows), "pixel": pixel_features(tables.gather(pixels, rows), seed=seed)}
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


def collection_maps(codes: np.ndarray, pixels: np.ndarray, seed: int = 0,
                    projected: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The two maps stored with an index: row i is item i. `projected`, the pixels on their principal
    components when a build has them already (`BuildInput.pixel_projection`), saves the pixel map a
    PCA and a pass over the pixels of its own: it uses the first PIXEL_PCA of them."""
    features = pixel_features(pixels, seed=seed) if projected is None else projected[:, :PIXEL_PCA]
    return {"code": landmark_tsne(codes, seed=seed), "pixel": landmark_tsne(features, seed=seed)}
