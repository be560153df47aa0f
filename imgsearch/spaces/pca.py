"""PCA space: the linear auto-encoder, the fair baseline for what depth buys.

256 principal components of the collection's pixels (the code's length), fitted at build time;
exact Euclidean distance between projections, in the same [0, 1] pixel units as pixel space.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import layout, tables
from ..knn import BruteForce
from ..pca import PCA
from ..tables import NpzWriter
from .base import PCA_FIT_ROWS, BuildInput, LoadInput, Query, Space, SpaceError, check_rows, load_npz


class PcaSpace(Space):
    name = "pca"
    title = "PCA space"
    description = "PCA, the linear auto-encoder: the pixels' 256 principal components, exact Euclidean"
    metric = "euclidean on the projection onto 256 principal components, pixels scaled to [0, 1]"

    def __init__(self, pca: PCA, projected: np.ndarray):
        self.pca = pca
        self.projected = projected  # (N, n) float32, in [0, 1] pixel units
        self.knn = BruteForce(projected)

    @classmethod
    def build(cls, data: BuildInput, directory: Path) -> dict:
        reuse = data.previous and data.previous.usable_section(cls.name, len(data.pixels))
        if reuse:  # an update: the previous components, its kept rows, and only the new rows projected
            old = data.previous.load_npz(layout.PCA, ("mean", "components", "variance", "total_variance", "projected"))
            pca = PCA(old["mean"], old["components"], old["variance"], float(old["total_variance"]))
            blocks = (block for (block,) in data.previous.carried(
                (old["projected"],), ((b,) for b in projected_blocks(pca, data.pixels[data.previous.kept:]))))
            settings = {**reuse["settings"], "fitted_in": data.previous.fitted_in(reuse)}
        else:
            pca = data.pixel_pca
            blocks = (y / np.float32(255.0) for _, y in tables.row_blocks(data.pixel_projection[0]))
            settings = {"fit_rows": min(len(data.pixels), PCA_FIT_ROWS),
                        "explained_variance": round(float(pca.variance.sum() / pca.total_variance), 4)}
        with NpzWriter(directory / layout.PCA) as npz:  # the projections (1 GB at a million) block by block
            npz.add_rows("projected", (len(data.pixels), pca.n_components), np.float32, blocks)
            for key, array in pca.arrays().items():
                npz.add(key, array)
        return {"metric": cls.metric, "dims": pca.n_components, "files": [layout.PCA], "settings": settings}

    @classmethod
    def load(cls, data: LoadInput, section: dict) -> "PcaSpace":
        a = load_npz(data, layout.PCA, ("mean", "components", "variance", "total_variance", "projected"))
        check_rows(layout.PCA, a["projected"], data.items)
        pca = PCA(a["mean"], a["components"], a["variance"], float(a["total_variance"]))
        if pca.components.shape[0] != data.pixels[0].size or a["projected"].shape[1] != pca.n_components:
            raise SpaceError(f"{layout.PCA} does not fit images of {data.pixels[0].size} values")
        return cls(pca, a["projected"])

    def embed(self, query: Query) -> np.ndarray:
        return self.embed_many(query.pixels[None], None)[0]

    def embed_many(self, pixels: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return self.pca.project(pixels) / 255.0

    filters_exactly = True

    def search(self, vector: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`rows`: sorted ids of the only items considered (a filter): only their projections are scanned."""
        if rows is None:
            ids, dists = self.knn.search(vector[None], k)
            return ids[0], dists[0]
        ids, dists = BruteForce(self.projected[rows]).search(vector[None], k)
        return rows[ids[0]], dists[0]

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """What 256 principal components keep of a (32, 32, 3) image, as uint8 pixels."""
        y = self.pca.project(pixels[None])
        return np.clip(self.pca.reconstruct(y)[0], 0, 255).round().astype(np.uint8).reshape(pixels.shape)


def projected_blocks(pca: PCA, pixels: np.ndarray):
    """The images' projections in [0, 1] pixel units, a block of rows at a time."""
    for _, rows in tables.row_blocks(pixels):
        block = pca.project(rows)
        block /= 255.0
        yield block
