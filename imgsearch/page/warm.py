"""Warming the page up once per build, in the background, so a first visitor does not wait for caches."""
from __future__ import annotations

import threading

import streamlit as st

from .common import load_index, log_once
from .map_view import map_background, map_spec
from .search_view import index_folders


@st.cache_resource(show_spinner=False, max_entries=1)
def warm_up(build_dir: str) -> threading.Thread:
    """Once per build, in the background: the work a first query and a first Map view would otherwise do
    while a person waits (measured: a first "Random" 2.4 s instead of 0.6 s; the Map's part is altair's
    import, the chart's spec, the samples and the hover pictures, ~0.7 s of a first Map view)."""
    thread = threading.Thread(target=warm_views, args=(build_dir,), name="imgsearch-warm-up", daemon=True)
    thread.start()
    return thread


def warm_views(build_dir: str) -> None:
    """A query in every space, and the Map view's samples, hover pictures and chart spec, into their caches.
    A failure here is only logged: the visitor's own request meets it again and says what went wrong."""
    from imgsearch.explore import MAP_POINTS, map_highlights

    try:
        index = load_index(build_dir)
        some_item = len(index) // 2
        index.search(some_item, k=10, spaces=list(index.spaces))
        index.reconstruct(index.thumbnail(some_item))
        index_folders(build_dir)  # the folder filter's choices: a pass over every name
        if not index.maps:
            return
        for space in ("code", "pixel"):
            points = map_background(build_dir, space, MAP_POINTS)
            map_highlights(index, space, None, [], background=points["id"].to_numpy())  # encodes the hover pictures
        map_spec(list(points["label"].cat.categories))
    except Exception as e:  # noqa: BLE001 - a warm-up must never take the server down
        log_once(f"warming up the page's caches failed ({type(e).__name__}: {e}); the first Map view will be slower")
