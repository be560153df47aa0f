"""What the page's views draw, as plain tables and HTML: the result grids of the Search view and the
points of the Map view.

Pictures travel inside the page as PNG data URLs of the 32x32 pixels (about 3 KB each; the browser
enlarges them without smoothing), so a result grid is one element with no further requests.

The Map view draws a bounded, seeded sample of the collection (the same for every query, whatever
the collection's size: a million points cannot be sent to a browser on each interaction), and on
top of it the query and its neighbours, always, with pictures for them and a few sampled points.
"""
from __future__ import annotations

import base64
import html
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from PIL import Image

from .previews import PREVIEW_SIDE, is_small
from .search import Index, printable

MAP_POINTS = 5000  # background dots per map: enough to show the classes' shapes, ~70 KB per map on the wire
HOVER_SAMPLE = 50  # sampled dots whose hover shows a picture, besides the query and its neighbours (~4 KB each, per map)
MATCH = "rgb(34, 160, 70)"  # frame of a result that shares the query's class
ROLES = ("sample", "neighbour", "query")  # drawing order on the map: the query last, on top


def item_url(index: Index, i: int, size: int | None = None, side: int = PREVIEW_SIDE) -> str:
    """Item i's picture as a data URL: its own file (a JPEG preview, long side `side`; previews.py) when the
    server may show it, else its 32x32 pixels as PNG (`size`: enlarged to that many pixels, for places that
    cannot enlarge)."""
    jpeg = index.preview_jpeg(i, side)
    url = None if jpeg is None else _jpeg_url(jpeg)
    return data_url(index.thumbnail(i), size) if url is None else url


@lru_cache(maxsize=512)
def _jpeg_url(jpeg: bytes) -> str | None:
    """A preview as a data URL; None for a CIFAR-sized one, whose indexed pixels show it as well, in less."""
    return None if is_small(jpeg) else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def warm_previews(index: Index, ids) -> None:
    """Decode the items' previews on every core at once (Pillow decodes without the GIL), into their cache:
    a page of photos is drawn in the time of a few decodes instead of all of them one after another."""
    ids = [int(i) for i in ids if index.paths[int(i)] is not None]
    if len(ids) > 1:
        with ThreadPoolExecutor(min(len(ids), os.cpu_count() or 1)) as pool:
            list(pool.map(index.preview_jpeg, ids))


def picture_url(picture) -> str:
    """A data URL as it is, or (32, 32, 3) pixels as one."""
    return picture if isinstance(picture, str) else data_url(picture)


def data_url(pixels: np.ndarray, size: int | None = None) -> str:
    """A PNG data URL of an image; `size` enlarges it (nearest neighbour) for places that cannot, like tooltips."""
    pixels = np.ascontiguousarray(pixels)
    return _png_url(pixels.tobytes(), pixels.shape, size)


@lru_cache(maxsize=4096)  # the same thumbnails come back on every map render and in many result grids (~20 MB at most)
def _png_url(raw: bytes, shape: tuple, size: int | None) -> str:
    img = Image.fromarray(np.frombuffer(raw, np.uint8).reshape(shape))
    if size is not None:
        img = img.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- the Search view's grids ------------------------------------------------------------------

@dataclass
class Cell:
    """One result in the grid: which space and rank, and where it sits in either layout.

    Wide: the spaces side by side, each a block of `per_row` columns filled rank after rank.
    Narrow (a phone): one row per rank, one column per space, so rank r of every space is side by side.
    Rows and columns count from 1 as in CSS grids; row 1 holds the spaces' headers.
    """
    space: int
    rank: int
    narrow_row: int
    narrow_col: int


def rank_by_rank(n_spaces: int, k: int) -> list[Cell]:
    """Every (space, rank) cell with its place in the narrow layout; in the wide layout each space's
    block fills in rank order, so the order of this list is all that layout needs."""
    return [Cell(s, r, narrow_row=r + 2, narrow_col=s + 1) for s in range(n_spaces) for r in range(k)]


GRID_CSS = """<style>
.ims-wrap { container-type: inline-size; container-name: ims; }
.ims-results { display: grid; grid-template-columns: repeat(var(--spaces), minmax(0, 1fr)); gap: 1rem 2rem; }
.ims-space { display: grid; grid-template-columns: repeat(var(--per-row), minmax(0, 1fr)); gap: .6rem .5rem;
             align-content: start; }
.ims-head { grid-column: 1 / -1; font-weight: 600; font-size: 1.15rem; margin: 0 0 .2rem 0; }
.ims-hit { margin: 0; min-width: 0; }
.ims-hit img { width: 100%; aspect-ratio: 1; image-rendering: pixelated; display: block; border-radius: 2px;
               border: 3px solid transparent; box-sizing: border-box; }
.ims-hit.ims-match img { border-color: var(--match); }
.ims-hit img.ims-photo { object-fit: cover; image-rendering: auto; }
.ims-name { opacity: .75; font-size: .72rem; }
.ims-hit figcaption { font-size: .78rem; line-height: 1.25; opacity: .8; overflow-wrap: anywhere; }
/* A phone: rank by rank, so the spaces stay comparable at a glance. */
@container ims (max-width: 760px) {
  .ims-results { gap: .5rem .6rem; }
  .ims-space { display: contents; }
  .ims-head { grid-column: var(--col); grid-row: 1; font-size: .95rem; }
  .ims-hit { grid-column: var(--col); grid-row: var(--row); }
}
.ims-query { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-end; }
.ims-query figure { margin: 0; }
.ims-query img { image-rendering: pixelated; display: block; object-fit: cover; }
.ims-query img.ims-photo { image-rendering: auto; }
.ims-query figcaption { font-size: .85rem; opacity: .8; max-width: 16rem; }
.ims-groups { align-items: flex-start; gap: 1.2rem; }
.ims-group { display: flex; flex-direction: column; gap: .3rem; }
</style>"""


def results_html(columns: list[tuple[str, list, object]], thumbnail, query_label: str | None, per_row: int) -> str:
    """The result grids of every space as one HTML block.

    columns: (header, hits, distance formatter) per space, in display order; thumbnail(id) -> (32, 32, 3) uint8
    or a data URL (`item_url`). A hit with a file has its name (relative to the collection's root) below.
    """
    k = max((len(hits) for _, hits, _ in columns), default=0)
    cells = {(c.space, c.rank): c for c in rank_by_rank(len(columns), k)}
    parts = [f'<div class="ims-wrap"><div class="ims-results" style="--spaces:{len(columns)};'
                       f'--per-row:{per_row};--match:{MATCH}">']
    for s, (header, hits, fmt) in enumerate(columns):
        parts.append(f'<div class="ims-space"><div class="ims-head" style="--col:{s + 1}">{html.escape(header)}</div>')
        for r, hit in enumerate(hits):
            cell = cells[(s, r)]
            same = query_label is not None and hit.label == query_label
            caption = f"{'✓ ' if same else ''}#{r + 1} · {hit.label or 'unlabelled'} · d={fmt(hit.distance)}"
            name = printable(getattr(hit, "name", None))
            named = f'<br><span class="ims-name">{html.escape(name)}</span>' if name else ""
            src = picture_url(thumbnail(hit.id))
            photo = ' class="ims-photo"' if src.startswith("data:image/jpeg") else ""
            parts.append(f'<figure class="ims-hit{" ims-match" if same else ""}" style="--row:{cell.narrow_row};'
                         f'--col:{cell.narrow_col}" title="{html.escape(name or caption)}"><img{photo} src="{src}" '
                         f'alt="{html.escape(name or caption)}"><figcaption>{html.escape(caption)}{named}</figcaption></figure>')
        parts.append("</div>")
    parts.append("</div></div>" + GRID_CSS)  # the style after the content: a leading <style> is dropped by the sanitiser
    return "".join(parts)


def _figures(pictures) -> str:
    out = []
    for p, c, w in pictures:
        src = picture_url(p)
        photo = ' class="ims-photo"' if src.startswith("data:image/jpeg") else ""
        out.append(f'<figure><img{photo} src="{src}" width="{w}" height="{w}" alt="{html.escape(c)}">'
                   f"<figcaption>{html.escape(c)}</figcaption></figure>")
    return "".join(out)


def pictures_html(pictures: list[tuple[np.ndarray | str, str, int]]) -> str:
    """A row of pictures, each (pixels or a data URL, caption, width in CSS pixels); pixels are enlarged
    without smoothing, photos cropped to the square."""
    return f'<div class="ims-query">{_figures(pictures)}</div>{GRID_CSS}'


def groups_html(groups: list[list[tuple[np.ndarray, str, int]]]) -> str:
    """Groups of pictures side by side (wrapping on a narrow page), each group a column."""
    inner = "".join(f'<div class="ims-group">{_figures(g)}</div>' for g in groups)
    return f'<div class="ims-query ims-groups">{inner}</div>{GRID_CSS}'


# ---- the Map view ---------------------------------------------------------------------------

def map_sample(n: int, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted ids of at most `limit` (default MAP_POINTS) items, the same for every call with the same n and seed."""
    limit = MAP_POINTS if limit is None else limit
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def label_names(index: Index) -> list[str]:
    """Every label a map can show: the classes, and "unlabelled" when some items have none."""
    return index.classes + (["unlabelled"] if bool((index.labels < 0).any()) else [])


def item_labels(index: Index, ids: np.ndarray) -> np.ndarray:
    names = np.array(index.classes + ["unlabelled"], dtype=object)
    labels = index.labels[ids]
    return names[np.where(labels >= 0, labels, len(index.classes))]


def map_points(index: Index, space: str, limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The background of a map: a seeded sample of at most `limit` (default MAP_POINTS) items with id, x, y
    and label."""
    ids = map_sample(len(index), limit, seed)
    xy = index.maps[space][ids]
    return pd.DataFrame({"id": ids.astype(np.int32), "x": xy[:, 0], "y": xy[:, 1],
                         "label": pd.Categorical(item_labels(index, ids), categories=label_names(index))})


def map_highlights(index: Index, space: str, query_id: int | None, neighbour_ids: list[int],
                   background: np.ndarray | None = None, hover: int = HOVER_SAMPLE, seed: int = 0) -> pd.DataFrame:
    """The points drawn on top of the background, each with a picture for its tooltip: the query and its
    neighbours (always, sampled or not) and `hover` points of the background (`background`: its ids)."""
    pool = map_sample(len(index), seed=seed) if background is None else background
    rng = np.random.default_rng(seed + 1)
    roles = {int(i): "sample" for i in rng.choice(pool, min(hover, len(pool)), replace=False)}
    roles.update({int(i): "neighbour" for i in neighbour_ids})
    if query_id is not None:
        roles[int(query_id)] = "query"
    ids = np.array(sorted(roles, key=lambda i: ROLES.index(roles[i])), dtype=np.int64)  # drawn in this order
    warm_previews(index, ids)
    xy = index.maps[space][ids] if len(ids) else np.zeros((0, 2), np.float32)
    return pd.DataFrame({"id": ids.astype(np.int32), "x": xy[:, 0], "y": xy[:, 1], "label": item_labels(index, ids),
                         "role": [roles[int(i)] for i in ids],
                         "image": [item_url(index, int(i), 64) for i in ids]})


# ---- the Search view's cutoff -------------------------------------------------------------------

def distance_range(index: Index, space: str, queries: int = 20, k: int = 50, seed: int = 0) -> tuple[float, float, float]:
    """(0, the largest, the median) of the distances from `queries` sampled items to their k nearest in
    `space`: the range a distance cutoff's slider covers, and a starting point inside it."""
    rng = np.random.default_rng(seed)
    items = rng.choice(len(index), min(queries, len(index)), replace=False)
    found = [h.distance for i in items for h in index.search(int(i), k=k, spaces=[space]).hits[space]]
    if not found:
        return 0.0, 1.0, 0.5
    high = float(max(found))
    return 0.0, high if high > 0 else 1.0, float(np.median(found))
