"""The Search view: the query (an upload or an item), its reconstructions, and each space's results side
by side, with "More like this", "Open", "Between" and the filters."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from imgsearch.images import ImageError

from .common import load_index, public, set_query

if TYPE_CHECKING:
    from imgsearch.search import Index


MAX_COLUMNS = 4  # spaces side by side; more would shrink each grid below a readable size


def spaces_ui(index: Index) -> list[str]:
    """Which spaces to compare, side by side (two to four)."""
    from imgsearch.spaces import DEFAULT_SPACES

    default = [s for s in DEFAULT_SPACES if s in index.spaces]
    chosen = st.multiselect("Spaces to compare", list(index.spaces), default=default, key="spaces",
                            max_selections=MAX_COLUMNS, format_func=lambda s: index.spaces[s].title,
                            help="; ".join(f"{s.title}: {s.description}" for s in index.spaces.values()))
    return chosen or default


def ask_random(label: str | None = None) -> None:
    # Only a request: the pick is drawn in the next run from the index loaded then, since this callback's
    # run may have loaded the build a swap has since replaced.
    st.session_state.random_pick = {"label": label}


def upload_ui(col) -> None:
    """The upload widget: it needs no index, so it is drawn before the index loads."""
    with col:
        st.file_uploader("Upload an image", key="upload", type=["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"],
                         on_change=lambda: st.session_state.update(query="upload"))


def pick_ui(row, index: Index):
    """Pick from the collection (in `row`: "Random", and a popover with the class and the item number);
    returns the current query (an item id or an upload) or None."""
    pick = st.session_state.pop("random_pick", None)
    if pick is not None:
        label = pick["label"] if pick["label"] in index.classes else None
        if label is not None and not len(index.items_of(label)):
            label = None  # a class the rebuilt collection no longer has
        current = st.session_state.get("query")
        set_query(index.random_item(np.random.default_rng(), label, other_than=current if isinstance(current, int) else None))
        st.session_state.collection_changed = False
    row.button("Random", key="random", on_click=ask_random)
    with row.popover("By class or number"):
        if index.classes:
            label = st.selectbox("Class", index.classes, key="pick_class")
            st.button(f"Random {label}", key="random_class", on_click=ask_random, args=(label,))
        st.number_input("Item number", 0, len(index) - 1, key="item_number", step=1,
                        on_change=lambda: st.session_state.update(query=int(st.session_state.item_number)))
    if st.session_state.pop("collection_changed", False):
        st.info("The collection changed (the index was rebuilt), so the previous query was cleared; pick a new one.")
    query = st.session_state.get("query")
    if query == "upload":
        return st.session_state.get("upload")  # None after the upload is cleared
    return query


def query_view_ui(index: Index, pixels: np.ndarray, query_label: str | None, caption: str, item: int | None) -> None:
    """The query large (an item's own picture when it has one), the 32x32 version the search used, and what
    the code (and PCA) keep of it."""
    from imgsearch.explore import item_url, pictures_html

    shown = [(pixels if item is None else item_url(index, item), caption, 224), (pixels, "32×32, as searched", 32),
             (index.reconstruct(pixels), f"Auto-encoder: rebuilt from its {index.meta['code_dim']}-d code", 160)]
    pca = index.spaces.get("pca")
    if pca:
        shown.append((pca.reconstruct(pixels), f"PCA: rebuilt from {pca.pca.n_components} components", 160))
    st.html(pictures_html(shown))
    if query_label:
        st.markdown(f"Query class: **{query_label}**")


def item_caption(index: Index, item: int) -> str:
    """"Item 12", and its name in the collection when it has a file."""
    from imgsearch.search import printable

    name = printable(index.name(item))
    return f"Item {item}" + (f": {name}" if name else "")


def more_like(space: str, ids: list[int]) -> None:
    """A "more like this" pill: its hit becomes the query, and the pill is released for the next click."""
    rank = st.session_state.get(f"more_{space}")
    st.session_state[f"more_{space}"] = None
    if rank is not None:
        set_query(ids[rank])


def results_ui(index: Index, results, spaces: list[str], query_label: str | None) -> None:
    """Every space's top-k as one picture grid (side by side; rank by rank on a phone), then a row of
    "more like this" pills and one of "open" pills per space: one element each instead of a picture and
    buttons per hit."""
    from imgsearch.explore import item_url, results_html, warm_previews

    matches = results.agreement(query_label) or {}
    columns = []
    for space in spaces:
        title, hits = index.spaces[space].title, results.hits[space]
        header = f"{title}: {matches[space]}/{len(hits)} share the query's class" if space in matches else title
        if space in results.notes:
            header += f" · {results.passed(space)} of {results.k} passed"
        if space in results.unavailable:
            header = f"{title}: unavailable"
        columns.append((header, hits, index.spaces[space].format_distance))
    warm_previews(index, {h.id for space in spaces for h in results.hits[space]})
    per_row = 5 if len(spaces) <= 2 else 3  # keep thumbnails large enough to see when more spaces share the width
    st.html(results_html(columns, lambda i: item_url(index, i), query_label, per_row))
    for why in results.unavailable.values():
        st.warning(why)
    for note in results.notes.values():
        st.caption(note)
    for col, space in zip(st.columns(len(spaces), gap="large"), spaces):
        hits = results.hits[space]
        col.pills(f"More like this: {index.spaces[space].title.lower()} result", list(range(len(hits))), key=f"more_{space}",
                  format_func=lambda r: f"#{r + 1}", on_change=more_like, args=(space, [h.id for h in hits]))
        col.pills(f"Open: {index.spaces[space].title.lower()} result", list(range(len(hits))), key=f"open_{space}",
                  format_func=lambda r: f"#{r + 1}", on_change=open_result, args=(space, [h.id for h in hits]))
    between_ui(index, results, spaces)


def query_key():
    """What tells one query from the next: an item id, or the upload's file id."""
    query = st.session_state.get("query")
    return getattr(st.session_state.get("upload"), "file_id", None) if query == "upload" else query


def ask_between(space: str, ids: list[int], of) -> None:
    """A "between" pill: remember which result, for this query; the pill is released for the next click."""
    rank = st.session_state.get(f"between_{space}")
    st.session_state[f"between_{space}"] = None
    if rank is not None:
        st.session_state.between = {"of": of, "space": space, "rank": rank, "item": ids[rank]}


def between_ui(index: Index, results, spaces: list[str]) -> None:
    """Per space, "Between" pills; under them the decoder's images on the way from the query's code to the
    picked result's, with the nearest real item of each step beneath."""
    for col, space in zip(st.columns(len(spaces), gap="large"), spaces):
        hits = results.hits[space]
        col.pills(f"Between the query and a {index.spaces[space].title.lower()} result", list(range(len(hits))),
                  key=f"between_{space}", format_func=lambda r: f"#{r + 1}", on_change=ask_between,
                  args=(space, [h.id for h in hits], query_key()))
    asked = st.session_state.get("between")
    if not asked or asked["of"] != query_key() or asked["space"] not in index.spaces:
        return
    from imgsearch.explore import groups_html

    start = results.query_id if results.query_id is not None else results.query_pixels
    result = index.between(start, asked["item"])
    st.markdown(f"**Between the query and {index.spaces[asked['space']].title.lower()} result #{asked['rank'] + 1}**: "
                f"the decoder's images of {len(result.pixels)} codes on the way from one code to the other (the ends "
                "are their reconstructions); beneath each, the nearest real image in code space.")
    st.html(groups_html([[(p, f"step {i + 1}", 72), (index.thumbnail(n), f"item {n} · {index.label(n) or 'unlabelled'}", 72)]
                         for i, (p, n) in enumerate(zip(result.pixels, result.nearest.tolist()))]))


def open_result(space: str, ids: list[int]) -> None:
    """An "open" pill: its hit is shown large (opened_ui), and the pill is released for the next click."""
    rank = st.session_state.get(f"open_{space}")
    st.session_state[f"open_{space}"] = None
    if rank is not None:
        st.session_state.opened = ids[rank]


def opened_ui(index: Index) -> None:
    """The opened result: its picture at screen size, its name, file size, pixel dimensions, modification time
    and class, with "More like this" and "Close"."""
    from imgsearch.explore import item_url
    from imgsearch.previews import SCREEN_SIDE
    from imgsearch.search import printable

    item = st.session_state.get("opened")
    if not isinstance(item, int) or not 0 <= item < len(index):
        return
    d = index.details(item)
    with st.container(border=True, key="opened_view"):
        url = item_url(index, item, side=SCREEN_SIDE)
        st.html(f'<img src="{url}" alt="item {item}" style="max-width:100%;max-height:80vh;min-width:min(100%, 256px);'
                f'image-rendering:{"auto" if url.startswith("data:image/jpeg") else "pixelated"}">')
        facts = [f"`{printable(d['name'])}`" if d["name"] else f"item {item} (no file of its own)",
                 f"class **{d['label'] or 'unlabelled'}**"]
        if d["bytes"] is not None:
            facts.append(f"{d['bytes']:,} bytes")
        if d["width"]:
            facts.append(f"{d['width']}×{d['height']} pixels")
        if d["modified"]:
            facts.append(f"modified {d['modified']}")
        st.markdown(" · ".join(facts))
        row = st.container(horizontal=True)
        row.button("More like this", key="opened_more", on_click=lambda: (set_query(item), st.session_state.pop("opened")))
        row.button("Close", key="opened_close", on_click=lambda: st.session_state.pop("opened", None))


@st.cache_data(show_spinner=False, max_entries=16)
def cutoff_range(build_dir: str, space: str) -> tuple[float, float, float]:
    """A distance cutoff slider's range in `space`, from the collection's own distances (explore.distance_range)."""
    from imgsearch.explore import distance_range

    return distance_range(load_index(build_dir), space)


def settings_ui(row, index: Index) -> tuple[list[str], int, dict]:
    """The spaces, k, and the filters and cutoffs (Index.search's keywords), each in a popover of `row`."""
    # The controls wait in popovers: a closed popover's widgets are not drawn, so a visit does not wait
    # for the browser to compile their code (a later visit 160-280 ms sooner, docs/page.md).
    with row.popover("Search settings"):
        spaces = spaces_ui(index)
        k = st.slider("Neighbours per space (k)", 1, 50, 10, key="k")
    with row.popover("Narrow the results"):
        narrow = narrow_ui(index, spaces)
    return spaces, k, narrow


def narrow_ui(index: Index, spaces: list[str]) -> dict:
    """Folder and class filters and a per-space distance cutoff (off by default): Index.search's keywords."""
    folders = index_folders(str(index.path))
    from imgsearch.search import printable

    chosen = {"folder": st.multiselect("Only in these folders", folders, key="filter_folders",
                                       format_func=printable, placeholder="every folder") if folders else None,
              "label": st.multiselect("Only of these classes", index.classes, key="filter_classes",
                                      placeholder="every class") if index.classes else None}
    cutoffs = {}
    for space in spaces:
        title = index.spaces[space].title
        if st.checkbox(f"{title}: only results closer than…", key=f"cutoff_on_{space}"):
            low, high, middle = cutoff_range(str(index.path), space)  # 20 searches, once a build: only when asked
            cutoffs[space] = st.slider(f"{title}: maximum distance", low, high, middle, key=f"cutoff_{space}",
                                       format="%.3f" if high < 10 else "%.0f")
    return {**chosen, "max_distance": cutoffs or None}


@st.cache_data(show_spinner=False, max_entries=2)
def index_folders(build_dir: str) -> list[str]:
    return load_index(build_dir).folders()


def search_view(index: Index, pick_col) -> None:
    """The Search view below the upload widget: the pick from the collection, the settings, and the results."""
    with pick_col:
        st.markdown("**…or pick one from the collection**")
        row = st.container(horizontal=True)
    query = pick_ui(row, index)
    spaces, k, narrow = settings_ui(row, index)
    if query is None:
        st.info("Upload an image or pick one from the collection to search.")
        return
    started = time.perf_counter()
    try:
        results = index.search(query, k=k, spaces=spaces, **narrow)
    except (ImageError, ValueError) as e:
        st.error(public(str(e)))
        return
    except IndexError:  # an item id from before a swap that follow_index could not see (defence in depth)
        st.info("That item is not in the collection any more (the index was rebuilt); pick a new query.")
        return
    took = time.perf_counter() - started
    query_label = index.label(results.query_id) if results.query_id is not None else None
    caption = item_caption(index, results.query_id) if results.query_id is not None else f"Upload: {query.name}"
    query_view_ui(index, results.query_pixels, query_label, caption, results.query_id)
    st.caption(f"Searched {len(index):,} images in {len(spaces)} spaces in {took * 1000:.0f} ms"
               + (" (the query itself is left out)." if results.query_id is not None else "."))
    opened_ui(index)
    results_ui(index, results, spaces, query_label)
