"""Tables behind the map view: one row per point, row i = item i.

Every item is a point (id, label, x, y). Thumbnails ride along only for the highlighted
points and a small random sample: a data URL is ~1 KB, and 50,000 of them would make every
page update tens of megabytes.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from PIL import Image

from .search import Index

THUMBNAIL_SAMPLE = 600  # random points whose hover shows a picture, besides the highlighted ones


def data_url(pixels: np.ndarray, size: int = 64) -> str:
    img = Image.fromarray(np.asarray(pixels)).resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def map_points(index: Index, space: str) -> pd.DataFrame:
    """All items: id, x, y, label ("unlabelled" where unknown)."""
    xy = index.maps[space]
    labels = np.array(index.classes + ["unlabelled"], dtype=object)[np.where(index.labels >= 0, index.labels, len(index.classes))]
    return pd.DataFrame({"id": np.arange(len(xy)), "x": xy[:, 0], "y": xy[:, 1], "label": labels})


def map_highlights(index: Index, points: pd.DataFrame, query_id: int | None, neighbour_ids: list[int],
                   seed: int = 0) -> pd.DataFrame:
    """Rows of `points` (from map_points) for the query, its code-space neighbours and a random
    sample, each with a thumbnail for hovering."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(index), min(THUMBNAIL_SAMPLE, len(index)), replace=False)
    roles = {int(i): "sample" for i in sample}
    roles.update({int(i): "neighbour" for i in neighbour_ids})
    if query_id is not None:
        roles[int(query_id)] = "query"
    ids = np.array(list(roles), dtype=int)
    return points.iloc[ids].assign(role=[roles[i] for i in ids], image=[data_url(index.thumbnail(i)) for i in ids])
