"""imgsearch: find similar images in pixel space and in the auto-encoder's code space.

    streamlit run app.py          (IMGSEARCH_INDEX=DIR opens another index; default data/index)

Only widgets and pictures live here; everything computed comes from the imgsearch package.
Visitors are not trusted (README, "Security"): they see sentences, collection names and relative
paths, never the server's folders, and can build an index only when the operator starts the
server with IMGSEARCH_BUILD_ROOT=DIR, and then only from folders inside DIR.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from imgsearch.data import DATA_DIR
from imgsearch.images import ImageError

# The rest of the package imports torch, which takes seconds on a cold server: the page draws its upload
# widget first and imports the package after it (in main and the functions it calls), so a first visitor
# sees the page while the model and the index load.
if TYPE_CHECKING:
    from imgsearch.search import Index

INDEX_DIR = os.environ.get("IMGSEARCH_INDEX", str(DATA_DIR / "index"))  # index.DEFAULT_INDEX, without importing torch
BUILD_ROOT = os.environ.get("IMGSEARCH_BUILD_ROOT") or None  # unset: the page cannot build
# Session keys that hold item ids, classes or space names of one build: cleared when the index is swapped.
INDEX_STATE = ("query", "item_number", "pick_class", "spaces", "map_code", "map_pixel", "quality_class",
               "quality_first", "quality_second", "between", "directions_class", "filter_folders",
               "filter_classes", "opened")
CUTOFF_KEYS = ("cutoff_on_", "cutoff_")  # per space: the cutoff's switch and value, whose range is the build's
GROUPS_SHOWN, GROUP_PICTURES = 20, 12  # the Duplicates view draws this many groups, this many pictures each
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s`'\"()\[\]{},;]*")
VIEWS = ("Search", "Map", "Quality", "Duplicates")
MAX_COLUMNS = 4  # spaces side by side; more would shrink each grid below a readable size


@st.cache_resource(show_spinner="Loading the model and the index…", max_entries=1)
def load_index(build_dir: str) -> Index:
    """Keyed by the build directory the index link points at, so a rebuild is picked up on the next run."""
    import torch
    from threadpoolctl import threadpool_limits

    from imgsearch.search import Index

    # A query is one image: extra threads only spin against each other, against other visitors' queries
    # and against the browser on a small machine (measured: code-space queries 5x faster under load).
    torch.set_num_threads(1)
    threadpool_limits(1)
    return Index.load(build_dir)


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


@st.cache_data(show_spinner="Searching this class's images in every space…", max_entries=32)
def class_disagreements(build_dir: str, label: str, first: str, second: str):
    from imgsearch.quality import disagreements

    return disagreements(load_index(build_dir), label, first=first, second=second)


def shown_path(path: str) -> str:
    """A server path as a visitor may see it: relative to the build root or the working directory, else its name."""
    p = Path(os.path.normpath(path))
    for base in ([Path(BUILD_ROOT).resolve()] if BUILD_ROOT else []) + [Path.cwd().resolve()]:
        for candidate in (p, Path(os.path.realpath(p))):
            if candidate == base or base in candidate.parents:
                return str(candidate.relative_to(base))
    return p.name or "."


def collection_name(spec) -> str:
    """`cifar10` as it is; a folder's path as shown_path shows it."""
    return shown_path(spec) if isinstance(spec, str) and spec.startswith("/") else str(spec)


def public(message: str) -> str:
    """A message for visitors: every absolute path in it made relative (or cut to its name); the operator's
    terminal gets it whole, once per process."""
    log_once(message)
    return ABSOLUTE_PATH.sub(lambda m: shown_path(m.group(0).rstrip(".:")) + m.group(0)[len(m.group(0).rstrip(".:")):],
                             message)


@st.cache_resource(show_spinner=False, max_entries=256)
def log_once(message: str) -> None:
    print(f"imgsearch: {message}", file=sys.stderr)


def folder_in_root(typed: str, root: Path) -> Path:
    """The folder a visitor typed, inside the build root after resolving `..` and symlinks, or ValueError."""
    text = typed.strip()
    if not text:
        raise ValueError("Type the name of a folder inside the build root.")
    target = (root / text).resolve()  # an absolute `typed` replaces the root, and is refused below like `..`
    if target != root and root not in target.parents:
        raise ValueError("Only folders inside the build root can be indexed.")
    if not target.is_dir():
        raise ValueError(f"There is no folder {text!r} inside the build root.")
    return target


def build_ui(reason: str) -> None:
    """No usable index: say why in one sentence, and offer to build one when the operator allows it."""
    st.info(public(reason))
    if not BUILD_ROOT:
        st.caption("Building an index from this page is off. The operator can build one with "
                   "`imgsearch build-index`, or allow building from the folders inside one directory by "
                   "starting the server with IMGSEARCH_BUILD_ROOT=DIR.")
        return
    from imgsearch.data import CollectionError
    from imgsearch.index import build_index, BuildError
    from imgsearch.model import DEFAULT_CHECKPOINT, CheckpointError
    from imgsearch.publish import BuildBusyError

    root = Path(BUILD_ROOT).resolve()
    typed = st.text_input("Folder of images to index, inside the build root", value=".", key="build_data",
                          help="Class subfolders give labels; `.` is the build root itself.")
    if st.button("Build the index", key="build", type="primary"):
        try:
            folder = folder_in_root(typed, root)
        except ValueError as e:
            st.error(str(e))
            return
        bar = st.progress(0.0, text="starting…")
        try:
            summary = build_index(str(folder), DEFAULT_CHECKPOINT, INDEX_DIR, progress=False, wait=False,
                                  on_step=lambda name, frac: bar.progress(frac, text=name))
        except BuildBusyError as e:  # one build at a time, whichever session or terminal started it
            st.warning(str(e))
            return
        except (CollectionError, CheckpointError, BuildError) as e:
            st.error(public(str(e)))
            return
        st.success(f"Indexed {summary['items']} images in {summary['seconds']:.0f} s"
                   + (f" ({len(summary['skipped'])} unreadable files skipped)." if summary["skipped"] else "."))
        st.rerun()


def sidebar_ui(index: Index) -> None:
    """The index's description, below the view switch (drawn before the index loaded, in main)."""
    m = index.meta
    with st.sidebar:
        st.header("Index")
        st.markdown(
            f"- **{m['items']:,}** images from `{collection_name(m['collection'])}`\n"
            f"- model `{m['model']['fingerprint']}`, {m['code_dim']}-d codes, "
            f"trained on `{collection_name(m['model']['trained_on'].get('collection', '?'))}`\n"
            f"- built {m['built_at']}"
            + (f"\n- {m['skipped']} unreadable files skipped" if m.get("skipped") else "")
        )
        st.markdown("**Spaces**\n\n" + "\n".join(f"- **{name}**: {space.description}" + settings_note(m["spaces"][name]["settings"])
                               for name, space in index.spaces.items()))
        st.caption(f"Index directory: `{shown_path(INDEX_DIR)}`")
        skipped_ui(m)


def skipped_ui(meta: dict) -> None:
    """The files the build skipped: how many for each reason, and the first names (relative to the collection)."""
    from imgsearch.search import printable

    summary = meta.get("skipped_files")
    if not meta.get("skipped") or not isinstance(summary, dict):
        return
    with st.expander(f"Skipped files ({meta['skipped']:,})", expanded=False):
        st.markdown("\n".join(f"- {count:,}: {printable(public(str(reason)))}"
                              for reason, count in summary.get("reasons", {}).items()))
        first = summary.get("first", [])
        st.caption(f"The first {len(first)}:")
        st.markdown("\n".join(f"- `{printable(str(name))}`: {printable(public(str(why)))}" for name, why in first))


def settings_note(settings: dict) -> str:
    """The settings a person may want to see (the code space's lists or Annoy's trees), as a short parenthesis."""
    shown = [f"{k} {settings[k]:,}" for k in ("lists", "probes", "n_trees", "search_k") if k in settings]
    return f" ({', '.join(shown)})" if shown else ""


def spaces_ui(index: Index) -> list[str]:
    """Which spaces to compare, side by side (two to four)."""
    from imgsearch.spaces import DEFAULT_SPACES

    default = [s for s in DEFAULT_SPACES if s in index.spaces]
    chosen = st.multiselect("Spaces to compare", list(index.spaces), default=default, key="spaces",
                            max_selections=MAX_COLUMNS, format_func=lambda s: index.spaces[s].title,
                            help="; ".join(f"{s.title}: {s.description}" for s in index.spaces.values()))
    return chosen or default


def set_query(item: int) -> None:
    st.session_state.query = item
    st.session_state.item_number = item


def follow_index(index: Index) -> None:
    """Item ids, classes and space names kept in a session belong to the build they were picked in; after a
    swap they name other images, or none. Forget them, and say so once, when the build changed."""
    build = str(index.path)
    seen = st.session_state.get("build")
    if seen is not None and seen != build:
        had_query = st.session_state.get("query") is not None
        for key in [*INDEX_STATE, *(k for k in st.session_state if str(k).startswith(CUTOFF_KEYS))]:
            st.session_state.pop(key, None)
        st.session_state.collection_changed = had_query
    st.session_state.build = build


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
    st.markdown(f"Each dot is an image, placed by a 2-D map of its code (left) or its pixels (right): "
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


# The matplotlib plot's styles (imgsearch/evaluate.py), so the page and docs/precision_at_k.png read alike:
# codes solid, bits dashed, baselines dotted. "As served" lies on "exact" (they differ by 0.001): exact is
# drawn wide and light, as served dark, thin and dashed on top of it, so both stay visible.
CURVE_STYLES = {"pixels": ("#7f7f7f", [2, 3]), "pca": ("#8c564b", [2, 3]), "codes_exact": ("#9ecae1", [1, 0]),
                "codes_served": ("#08306b", [5, 3]), "bits_64": ("#bcbd22", [6, 3]), "bits_128": ("#ff7f0e", [6, 3]),
                "bits_256": ("#d62728", [6, 3]), "bits_256_sign": ("#e377c2", [6, 3, 1, 3])}


def precision_chart(report: dict, shown: dict):
    """Precision at k, one labelled line per representation, each its own colour and dash."""
    import altair as alt
    import pandas as pd

    keys = [key for key in shown if key in report["precision_curves"]]
    rows = pd.concat([pd.DataFrame({"k": np.arange(1, len(report["precision_curves"][key]) + 1),
                                    "precision": report["precision_curves"][key], "representation": shown[key]})
                      for key in keys])
    names = [shown[key] for key in keys]
    styles = [CURVE_STYLES.get(key, ("#333333", [1, 0])) for key in keys]
    # One column: a label cut at a phone's width would be unreadable. The chart's height includes the legend.
    legend = alt.Legend(title=None, orient="bottom", columns=1, symbolStrokeWidth=3, symbolSize=250, labelLimit=0)
    lines = alt.Chart(rows).mark_line(strokeWidth=2).encode(
        alt.X("k:Q", scale=alt.Scale(type="log"), title="k"),
        alt.Y("precision:Q", scale=alt.Scale(zero=False), title="precision at k"),
        alt.Color("representation:N", scale=alt.Scale(domain=names, range=[s[0] for s in styles]), legend=legend),
        alt.StrokeDash("representation:N", scale=alt.Scale(domain=names, range=[s[1] for s in styles]), legend=legend),
        tooltip=["representation:N", "k:Q", alt.Tooltip("precision:Q", format=".3f")],
    )

    def only(key):
        return alt.FieldEqualPredicate(field="representation", equal=shown.get(key, ""))

    # "As served" lies on "exact": exact is drawn wide beneath everything, as served again on top.
    wide = lines.transform_filter(only("codes_exact")).mark_line(strokeWidth=7)
    return alt.layer(wide, lines, lines.transform_filter(only("codes_served"))).properties(height=560)


def per_class_chart(report: dict, shown: dict):
    """P@10 of each class's queries, one bar per representation, in the precision chart's colours;
    None for a report without per-class figures (one made before evaluate recorded them)."""
    import altair as alt
    import pandas as pd

    from imgsearch.evaluate import PER_CLASS_SHOWN

    per_class = report.get("per_class_P@10", {})
    keys = [key for key in PER_CLASS_SHOWN if key in per_class and key in shown]
    if not keys:
        return None
    rows = pd.DataFrame([{"class": c, "representation": shown[key], "P@10": p}
                         for key in keys for c, p in per_class[key].items()])
    names = [shown[key] for key in keys]
    return alt.Chart(rows).mark_bar().encode(
        alt.Y("class:N", title=None, sort=list(per_class[keys[0]])),
        alt.YOffset("representation:N", sort=names),
        alt.X("P@10:Q", scale=alt.Scale(domain=[0, 1]), title="P@10 of the class's queries"),
        alt.Color("representation:N", scale=alt.Scale(domain=names, range=[CURVE_STYLES[k][0] for k in keys]),
                  legend=alt.Legend(title=None, orient="bottom", columns=1, labelLimit=0)),
        tooltip=["class:N", "representation:N", alt.Tooltip("P@10:Q", format=".3f")],
    ).properties(height=alt.Step(7))


def quality_view(index: Index) -> None:
    import pandas as pd

    from imgsearch.evaluate import REPRESENTATIONS
    from imgsearch.explore import groups_html, item_url
    from imgsearch.quality import ReportError, load_evaluation

    try:
        report = load_evaluation()
    except ReportError as e:
        report = None
        st.warning(public(str(e)))
    else:
        if report is None:
            st.info("No evaluation report yet: run scripts/evaluate.py --json docs/evaluation.json.")
    if report is not None:
        s = report["settings"]
        st.markdown(f"Retrieval on **{s['query_items']:,}** queries from `{collection_name(s['queries'])}` against "
                    f"**{s['database_items']:,}** images of `{collection_name(s['database'])}` (model `{s.get('model', '?')}`); "
                    "a result is relevant when it has the query's class.")
        shown = {key: name for key, name in REPRESENTATIONS.items() if key in report}
        table = pd.DataFrame({name: report[key] for key, name in shown.items()}).T
        if "bytes_per_item" in report:
            table["bytes per image"] = [report["bytes_per_item"].get(key) for key in shown]
        st.dataframe(table.style.format("{:.3f}", subset=[c for c in table.columns if c != "bytes per image"]),
                     key="quality_table")
        st.caption(f"Reconstruction MSE on the queries: {report['reconstruction_mse']:.4f} (pixels in [0, 1]).")
        st.altair_chart(precision_chart(report, shown), width="stretch")
        curves = report["precision_curves"]
        if "codes_exact" in curves and "codes_served" in curves:
            gap = float(np.max(np.abs(np.subtract(curves["codes_exact"], curves["codes_served"]))))
            st.caption(f"“{shown['codes_served']}” (dark, dashed) lies on “{shown['codes_exact']}” (wide, light blue): "
                       f"they differ by at most {gap:.3f} at any k.")
        per_class = per_class_chart(report, shown)
        if per_class is not None:
            st.markdown("**Precision at 10, class by class**: where each representation finds the class")
            st.altair_chart(per_class, width="stretch")
    if not index.classes:
        return
    st.subheader("Where two searches disagree")
    names = list(index.spaces)
    a, b, c = st.columns(3)
    label = a.selectbox("Class", index.classes, key="quality_class")
    first = b.selectbox("Space", names, index=names.index("code") if "code" in names else 0, key="quality_first",
                        format_func=lambda s: index.spaces[s].title)
    others = [n for n in names if n != first]
    second = c.selectbox("compared with", others, index=others.index("pixel") if "pixel" in others else 0,
                         key="quality_second", format_func=lambda s: index.spaces[s].title)
    result = class_disagreements(str(index.path), label, first, second)
    st.markdown(f"Of {result.queries} sampled **{label}** images, the nearest neighbour has the same class in "
                + ", ".join(f"{index.spaces[n].title.lower()} for **{r}**" for n, r in result.right.items()) + ".")
    t1, t2 = index.spaces[first].title, index.spaces[second].title
    for title, triples in ((f"{t1} right, {t2.lower()} wrong", result.first_wins),
                           (f"{t2} right, {t1.lower()} wrong", result.second_wins),
                           ("Both wrong", result.both_wrong)):
        st.markdown(f"**{title}** ({len(triples)})")
        if not triples:
            st.caption("none among the sampled images")
            continue
        st.html(groups_html([[(item_url(index, q), "query", 64), (item_url(index, x), f"{first}: {index.label(x)}", 64),
                               (item_url(index, y), f"{second}: {index.label(y)}", 64)] for q, x, y in triples[:6]]))


@st.cache_resource(show_spinner=False)
def duplicates_store() -> OrderedDict:
    """(build dir, space, threshold) -> groups, the 16 latest, shared by the sessions: each is computed once.
    Not st.cache_data: its progress bar is drawn while it is computed, which a cached function cannot replay."""
    return OrderedDict()


def duplicates_found(index: Index, space: str, threshold: float, slot):
    """The groups of `index` (imgsearch/duplicates.py), from the store or computed with a progress bar."""
    store, key = duplicates_store(), (str(index.path), space, threshold)
    if key not in store:
        store[key] = index.duplicates(space, threshold, progress=slow_progress_ui(slot, "Comparing every pair of images…"))
        slot.empty()
        while len(store) > 16:
            store.popitem(last=False)
    return store[key]


def slow_progress_ui(slot, text: str):
    """A progress callback that draws its bar only once the work has taken a second."""
    start, bar = time.perf_counter(), []

    def tell(fraction: float) -> None:
        if time.perf_counter() - start > 1.0:
            if not bar:
                bar.append(slot.progress(0.0, text=text))
            bar[0].progress(min(max(fraction, 0.0), 1.0), text=text)
    return tell


def duplicates_controls_ui(index: Index) -> tuple[str, float]:
    from imgsearch.duplicates import DEFAULT_SPACE, DEFAULT_THRESHOLDS, SLIDERS, SPACES, UNITS

    spaces = [s for s in SPACES if s != "bits" or "bits" in index.spaces]  # the others read codes.npy and pixels.npy
    space = st.radio("Compared in", spaces, index=spaces.index(DEFAULT_SPACE) if DEFAULT_SPACE in spaces else 0,
                     key="dup_space", horizontal=True)
    low, high, step = SLIDERS[space]
    if space == "bits":
        high = index.spaces["bits"].bits
    threshold = st.slider(f"Threshold ({UNITS[space]})", low, high, min(DEFAULT_THRESHOLDS[space], high), step,
                          key=f"dup_threshold_{space}")
    return space, threshold


def duplicate_picture(index: Index, item) -> np.ndarray:
    """The file's own picture (small), or the 32x32 thumbnail where there is no readable file."""
    from PIL import Image

    try:
        with Image.open(item.path) as im:
            im.thumbnail((128, 128))
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, TypeError, Image.DecompressionBombError):
        return index.thumbnail(item.id)


def duplicate_group_ui(index: Index, number: int, group) -> None:
    items = group.items[:GROUP_PICTURES]
    captions = [("★ keep · " if it.id == group.keep else "") + (it.name or f"item {it.id}") + " · " +
                (f"{it.width}×{it.height}" if it.width else "no file") +
                (f" · {it.bytes / 1024:.1f} KB" if it.bytes is not None else "") +
                ("" if it.id == group.keep else f" · {it.distance_to_keep:.3g}") for it in items]
    more = f" (the first {GROUP_PICTURES} shown)" if len(group.items) > GROUP_PICTURES else ""
    st.markdown(f"**Group {number}**: {len(group.items)} items{more}")
    st.image([duplicate_picture(index, it) for it in items], caption=captions, width=128)


def duplicates_view(index: Index) -> None:
    from imgsearch.duplicates import csv_text

    st.subheader("Near-duplicates")
    space, threshold = duplicates_controls_ui(index)
    found = duplicates_found(index, space, threshold, st.empty())
    st.markdown(f"**{len(found.groups):,} groups**, **{found.pairs:,} pairs** within {threshold} among "
                f"{found.items:,} images ({found.seconds:.1f} s). Nothing is moved or deleted: the CSV lists them.")
    st.download_button("Download as CSV", csv_text(found, shown_path), file_name="duplicates.csv", mime="text/csv",
                       key="dup_csv", disabled=not found.groups)
    for number, group in enumerate(found.groups[:GROUPS_SHOWN], 1):
        duplicate_group_ui(index, number, group)
    if len(found.groups) > GROUPS_SHOWN:
        st.caption(f"The first {GROUPS_SHOWN} of {len(found.groups):,} groups are drawn; the CSV holds them all.")


def main() -> None:
    st.set_page_config(page_title="imgsearch: similar images", page_icon="🔎", layout="wide")
    st.title("imgsearch")
    st.caption("Nearest neighbours of an image found in raw pixel space, PCA, and a convolutional auto-encoder's "
               "256-d code (as floats, or as 256 bits), side by side.")
    # Drawn before the package is imported and the index loaded (seconds on a cold server); cleared again
    # when there turns out to be no usable index.
    nav = st.sidebar.empty()
    view = nav.radio("View", VIEWS, key="view", horizontal=True)
    top = st.empty()
    pick_col = None
    if view == "Search":
        with top.container():
            upload_col, pick_col = st.columns(2)
            upload_ui(upload_col)
    from imgsearch.integrity import IndexLoadError, read_meta
    from imgsearch.publish import resolve

    try:
        read_meta(INDEX_DIR)
        index = load_index(str(resolve(INDEX_DIR)))
    except IndexLoadError as e:
        nav.empty()
        top.empty()
        build_ui(str(e))
        st.stop()
    follow_index(index)
    warm_up(str(index.path))
    sidebar_ui(index)
    other_view = {"Map": map_view, "Quality": quality_view, "Duplicates": duplicates_view}.get(view)
    if other_view:
        return other_view(index)
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
        st.error(str(e))
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


if __name__ == "__main__":
    main()
