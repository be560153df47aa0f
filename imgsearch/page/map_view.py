"""The Map view: 2-D maps of code and pixel space with the query and its neighbours, and what a code
direction means."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from .common import load_index, set_query

if TYPE_CHECKING:
    from imgsearch.search import Index


@st.cache_data(show_spinner="Decoding along code space's main directions…", max_entries=16)
def class_directions(build_dir: str, label: str | None):
    from imgsearch.generate import direction_grid

    index = load_index(build_dir)
    members = index.items_of(label) if label is not None else np.arange(len(index))
    return direction_grid(index.model, index.codes, members)


def directions_ui(index: Index) -> None:
    """A class's mean code, decoded, and moved along the top principal directions of code space."""
    from imgsearch.explore import pictures_html

    st.subheader("What a code direction means")
    label = st.selectbox("Class", [*index.classes, None], key="directions_class",
                         format_func=lambda c: "all images" if c is None else c)
    grid = class_directions(str(index.path), label)
    st.markdown(f"The decoder's image of the mean code of **{label or 'all images'}** (middle column), and of that "
                "code moved one and two standard deviations along each of the top principal directions of the "
                "collection's codes (one row each): what each direction changes in an image.")
    names = ["mean" if s == 0 else f"{s:+.0f}σ".replace("-", "−") for s in grid.spreads]
    for d, row in enumerate(grid.pixels):
        st.caption(f"Direction {d + 1}: {grid.explained[d]:.1%} of the codes' variance")
        st.html(pictures_html([(p, n, 96) for p, n in zip(row, names)]))


@st.cache_data(show_spinner=False, max_entries=4)
def map_background(build_dir: str, space: str, limit: int):
    """The bounded sample every query's map is drawn on: the same dots for every query of one build."""
    from imgsearch.explore import map_points

    return map_points(load_index(build_dir), space, limit)


@st.cache_data(show_spinner=False, max_entries=4)
def map_spec(classes: list[str]) -> dict:
    """The Map view's chart without its data, built (and checked by Altair, ~0.15 s) once: only the two
    datasets change from one query to the next. A sample of the collection as faint dots coloured by class;
    on top, a few sampled dots with pictures, the query's neighbours (black-edged diamonds) and the query
    (a large black cross)."""
    import altair as alt

    pick = alt.selection_point(name="pick", fields=["id"], on="click")
    colour = alt.Color("label:N", scale=alt.Scale(domain=classes),
                       legend=alt.Legend(title="class", orient="bottom", columns=5, symbolOpacity=1))
    axis = alt.Axis(labels=False, ticks=False, title=None, grid=False)
    x, y = alt.X("x:Q", axis=axis, scale=alt.Scale(zero=False)), alt.Y("y:Q", axis=axis, scale=alt.Scale(zero=False))
    base = alt.Chart(alt.NamedData(name="background")).mark_circle(size=6, opacity=0.3).encode(
        x, y, colour, tooltip=["id:Q", "label:N"])

    def by_role(*values):
        return alt.Scale(domain=["sample", "neighbour"], range=list(values))

    marked = alt.Chart(alt.NamedData(name="marked"))
    top = marked.transform_filter("datum.role !== 'query'").mark_point(filled=True, opacity=1).encode(
        x, y, colour,
        size=alt.Size("role:N", scale=by_role(30, 170), legend=None),
        shape=alt.Shape("role:N", scale=by_role("circle", "diamond"), legend=None),
        stroke=alt.Stroke("role:N", scale=by_role("white", "black"), legend=None),
        strokeWidth=alt.StrokeWidth("role:N", scale=by_role(0.6, 1.5), legend=None),
        tooltip=["id:Q", "label:N", "role:N", "image:N"],  # vega-tooltip draws an "image" field as a picture
    ).add_params(pick)
    # The query in no class colour at all: black, large, white-edged, drawn last so nothing covers it.
    query = marked.transform_filter("datum.role === 'query'").mark_point(
        shape="cross", size=700, filled=True, opacity=1, color="black", stroke="white", strokeWidth=2).encode(
        x, y, tooltip=["id:Q", "label:N", "role:N", "image:N"])
    return alt.layer(base, top, query).properties(height=460).interactive().to_dict()


def map_chart_ui(index: Index, space: str, query_id, neighbour_ids, limit: int) -> None:
    from imgsearch.explore import map_highlights

    points = map_background(str(index.path), space, limit)
    spec = map_spec(list(points["label"].cat.categories))
    spec["datasets"] = {"background": points,  # Streamlit sends DataFrames here as Arrow
                        "marked": map_highlights(index, space, query_id, neighbour_ids, background=points["id"].to_numpy())}
    st.vega_lite_chart(spec=spec, key=f"map_{space}", on_select=lambda: pick_from_map(space), selection_mode="pick",
                       width="stretch")


def pick_from_map(space: str) -> None:
    """A click on a map's highlighted dot makes it the query, before the next run draws the page."""
    event = st.session_state.get(f"map_{space}") or {}
    picked = ((event.get("selection") or {}).get("pick") or [{}])[0].get("id")
    if picked is not None:
        set_query(int(picked))


def map_view(index: Index) -> None:
    from imgsearch.explore import MAP_POINTS, item_url, pictures_html

    if not index.maps:
        st.info("This index has no 2-D maps: rebuild it with scripts/build_index.py (without --no-maps).")
        return directions_ui(index)
    shown = min(len(index), MAP_POINTS)
    st.markdown("Each dot is an image, placed by a 2-D map of its code (left) or its pixels (right): "
                + (f"a fixed sample of {shown:,} of the {len(index):,} images. " if shown < len(index) else "")
                + "The query is the black cross, its code-space neighbours the black-edged diamonds. "
                "Hover a larger dot for its picture; click one to make it the query.")
    query = st.session_state.get("query")
    query_id = query if isinstance(query, int) and 0 <= query < len(index) else None
    neighbours = []
    if query_id is not None:
        results = index.search(query_id, k=10, spaces=["code"])
        neighbours = [h.id for h in results.code]
        for why in results.unavailable.values():
            st.warning(why)
    st.caption(f"Map: {(index.meta['maps'] or {}).get('method', 'method not recorded')}."
               + (f" Query: item {query_id} ({index.label(query_id) or 'unlabelled'}) with its 10 code-space "
                  "neighbours." if query_id is not None else " Pick a query on the Search view, or click a point."))
    for col, space, title in zip(st.columns(2), ("code", "pixel"), ("Code space", "Pixel space")):
        with col:
            st.subheader(title)
            map_chart_ui(index, space, query_id, neighbours, MAP_POINTS)
    if query_id is not None:
        st.html(pictures_html([(item_url(index, i), c, 64) for i, c in
                               zip([query_id] + neighbours, ["query"] + [f"#{r + 1}" for r in range(len(neighbours))])]))
    directions_ui(index)
