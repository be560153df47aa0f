"""Exact k-nearest-neighbour search by brute force: the reference every approximate or pruned
search is checked against, and the search of the small spaces (pca)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

METRICS = ("euclidean", "angular")


def topk_ties_by_id(distances: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest distances, ties broken by the smaller index (as a stable sort would)."""
    k = min(k, len(distances))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(distances, k - 1)[k - 1]
    candidates = np.flatnonzero(distances <= kth)
    return candidates[np.lexsort((candidates, distances[candidates]))][:k]


class BruteForce:
    """Every query against every row. `angular` is Annoy's: sqrt(2 - 2 cos)."""

    def __init__(self, db: np.ndarray, metric: str = "euclidean"):
        if metric not in METRICS:
            raise ValueError(f"The metric is one of {', '.join(METRICS)}, not {metric!r}.")
        self.metric = metric
        db = np.require(db, np.float32, ["C"])
        with warnings.catch_warnings():  # a read-only memory map is shared, not copied: nothing here writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.db = torch.from_numpy(db)
        if metric == "angular":
            self.db = torch.nn.functional.normalize(self.db, dim=1)
        self.sq_norms = (self.db * self.db).sum(1)

    def __len__(self) -> int:
        return len(self.db)

    def search(self, queries: np.ndarray, k: int, chunk: int = 500, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) -> ids (Q, k) and distances (Q, k), nearest first; in query chunks so memory stays bounded."""
        q_all = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32))
        if self.metric == "angular":
            q_all = torch.nn.functional.normalize(q_all, dim=1)
        k = min(k, len(self.db))
        ids = np.empty((len(q_all), k), dtype=np.int64)
        dists = np.empty((len(q_all), k), dtype=np.float32)
        starts = range(0, len(q_all), chunk)
        for s in (progress(starts) if progress else starts):
            q = q_all[s:s + chunk]
            d2 = self.sq_norms[None, :] - 2.0 * q @ self.db.T + (q * q).sum(1, keepdim=True)
            top = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            ids[s:s + len(q)] = top.indices.numpy()
            dists[s:s + len(q)] = top.values.clamp(min=0).sqrt().numpy()
        return ids, dists
