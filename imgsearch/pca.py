"""PCA, the linear auto-encoder: one implementation for the pca space, the pixel search's bound,
the binary codes' projection, the 2-D maps and the evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import tables


@dataclass
class PCA:
    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (D, n) float32, orthonormal columns, largest variance first
    variance: np.ndarray  # (n,) float32: the variance each component explains
    total_variance: float = float("nan")  # of all D dimensions: variance.sum() / this = the share kept

    @property
    def n_components(self) -> int:
        return self.components.shape[1]

    def project(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """(N, D) -> (N, n) float32, in chunks: a uint8 collection is never copied whole as floats."""
        chunk = chunk or tables.CACHE_ROWS  # read when called: tests shrink it to see chunks on small data
        x2 = np.asarray(x).reshape(len(x), self.components.shape[0])  # not -1: an update may project no rows
        out = np.empty((len(x2), self.n_components), dtype=np.float32)
        for s, rows in tables.row_blocks(x2, chunk):
            out[s:s + chunk] = (rows.astype(np.float32) - self.mean) @ self.components
        return out

    def reconstruct(self, y: np.ndarray) -> np.ndarray:
        """(N, n) -> (N, D): the nearest point of the PCA subspace."""
        return np.asarray(y, dtype=np.float32) @ self.components.T + self.mean

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "variance": self.variance,
                "total_variance": np.float64(self.total_variance)}


def fit_pca(x: np.ndarray, n: int, *, max_rows: int | None = None, seed: int = 0, chunk: int = 5000) -> PCA:
    """Top-n principal components of the rows of x (any numeric dtype), from the covariance's eigenvectors.

    `max_rows` fits on a seeded random sample: the components of 20,000 CIFAR-10 images are those
    of 50,000 to within noise, at a fraction of the cost (the covariance is D x D whatever N is).
    """
    x = np.asarray(x).reshape(len(x), -1)
    rows = np.arange(len(x))
    if max_rows and len(x) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
    d = x.shape[1]
    n = min(n, d)  # beyond the rank of a tiny sample the extra directions are arbitrary but orthonormal
    total = torch.zeros(d, dtype=torch.float64)
    for s in range(0, len(rows), chunk):
        total += torch.from_numpy(tables.gather(x, rows[s:s + chunk]).astype(np.float64)).sum(0)
    mean = (total / len(rows)).float()
    cov = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, len(rows), chunk):
        c = torch.from_numpy(tables.gather(x, rows[s:s + chunk]).astype(np.float32)) - mean
        cov += (c.T @ c).double()  # float32 products, float64 sums: exact enough, twice as fast as float64
    cov /= len(rows)
    vals, vecs = _top_eigen(cov, n, seed)
    return PCA(mean.numpy(), np.ascontiguousarray(vecs.float().numpy()), vals.clamp(min=0).float().numpy(),
               float(torch.trace(cov).clamp(min=0)))


def _top_eigen(cov: torch.Tensor, n: int, seed: int, power_iterations: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The n largest eigenpairs of a symmetric PSD matrix, largest first.

    A full eigh of a 3,072 x 3,072 covariance takes ~15 s on two cores; when few components are
    wanted, a randomized subspace iteration (Halko et al. 2011) finds them in a fraction of that,
    to within float rounding for spectra that decay as image spectra do.
    """
    d = cov.shape[0]
    if 4 * (n + 32) > d:
        vals, vecs = torch.linalg.eigh(cov)
        order = torch.argsort(vals, descending=True)[:n]
        return vals[order], vecs[:, order]
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(cov @ torch.randn(d, n + 32, generator=g, dtype=cov.dtype))[0]
    for _ in range(power_iterations):
        q = torch.linalg.qr(cov @ q)[0]
    vals, small = torch.linalg.eigh(q.T @ cov @ q)
    order = torch.argsort(vals, descending=True)[:n]
    return vals[order], q @ small[:, order]
