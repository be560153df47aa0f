"""imgsearch: find similar images in pixel space and in the auto-encoder's code space.

    streamlit run app.py          (IMGSEARCH_INDEX=DIR opens another index; default data/index)

Only widgets and pictures live here; everything computed comes from the imgsearch package.
Visitors are not trusted (README, "Security"): they see sentences, collection names and relative
paths, never the server's folders, and can build an index only when the operator starts the
server with IMGSEARCH_BUILD_ROOT=DIR, and then only from folders inside DIR.
"""
import os
import re
import sys
import time
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from imgsearch.data import CollectionError
from imgsearch.evaluate import REPRESENTATIONS
from imgsearch.explore import map_highlights, map_points
from imgsearch.images import ImageError, upscale
from imgsearch.index import (DEFAULT_CHECKPOINT, DEFAULT_INDEX, BuildBusyError, IndexLoadError, build_index, read_meta,
                             resolve)
from imgsearch.model import CheckpointError
from imgsearch.quality import ReportError, disagreements, load_evaluation
from imgsearch.search import Index
from imgsearch.spaces import DEFAULT_SPACES

INDEX_DIR = os.environ.get("IMGSEARCH_INDEX", str(DEFAULT_INDEX))
BUILD_ROOT = os.environ.get("IMGSEARCH_BUILD_ROOT") or None  # unset: the page cannot build
# Session keys that hold item ids, classes or space names of one build: cleared when the index is swapped.
INDEX_STATE = ("query", "item_number", "pick_class", "spaces", "map_code", "map_pixel", "quality_class",
               "quality_first", "quality_second")
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s`'\"()\[\]{},;]*")
MATCH = (34, 160, 70)  # frame colour of a result that shares the query's class
VIEWS = ("Search", "Map", "Quality")
MAX_COLUMNS = 4  # spaces side by side; more would shrink each grid below a readable size


@st.cache_resource(show_spinner="Loading the model and the index…", max_entries=1)
def load_index(build_dir: str) -> Index:
    """Keyed by the build directory the index link points at, so a rebuild is picked up on the next run."""
    return Index.load(build_dir)


@st.cache_data(show_spinner="Searching this class's images in every space…", max_entries=32)
def class_disagreements(build_dir: str, label: str, first: str, second: str):
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
        except (CollectionError, CheckpointError) as e:
            st.error(public(str(e)))
            return
        st.success(f"Indexed {summary['items']} images in {summary['seconds']:.0f} s"
                   + (f" ({len(summary['skipped'])} unreadable files skipped)." if summary["skipped"] else "."))
        st.rerun()


def sidebar_ui(index: Index) -> str:
    """The index's description; returns the chosen view."""
    m = index.meta
    with st.sidebar:
        view = st.radio("View", VIEWS, key="view", horizontal=True)
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
    return view


def settings_note(settings: dict) -> str:
    """The settings a person may want to see (Annoy's), as a short parenthesis."""
    shown = [f"{k} {settings[k]:,}" for k in ("n_trees", "search_k") if k in settings]
    return f" ({', '.join(shown)})" if shown else ""


def spaces_ui(index: Index) -> list[str]:
    """Which spaces to compare, side by side (two to four)."""
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
        for key in INDEX_STATE:
            st.session_state.pop(key, None)
        st.session_state.collection_changed = had_query
    st.session_state.build = build


def ask_random(label: str | None = None) -> None:
    # Only a request: the pick is drawn in the next run from the index loaded then, since this callback's
    # run may have loaded the build a swap has since replaced.
    st.session_state.random_pick = {"label": label}


def query_ui(index: Index):
    """Upload or pick from the collection; returns the current query (an item id or an upload) or None."""
    rng = np.random.default_rng()
    pick = st.session_state.pop("random_pick", None)
    if pick is not None:
        label = pick["label"] if pick["label"] in index.classes else None
        if label is not None and not len(index.items_of(label)):
            label = None  # a class the rebuilt collection no longer has
        set_query(index.random_item(rng, label))
        st.session_state.collection_changed = False
    if st.session_state.pop("collection_changed", False):
        st.info("The collection changed (the index was rebuilt), so the previous query was cleared; pick a new one.")
    upload_col, pick_col = st.columns(2)
    with upload_col:
        upload = st.file_uploader("Upload an image", key="upload",
                                  type=["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"],
                                  on_change=lambda: st.session_state.update(query="upload"))
    with pick_col:
        st.markdown("**…or pick one from the collection**")
        a, b, c = st.columns([1, 1.4, 1.2])
        a.button("Random", key="random", on_click=ask_random)
        if index.classes:
            label = b.selectbox("Class", index.classes, key="pick_class", label_visibility="collapsed")
            b.button(f"Random {label}", key="random_class", on_click=ask_random, args=(label,))
        c.number_input("Item number", 0, len(index) - 1, key="item_number", step=1,
                       on_change=lambda: st.session_state.update(query=int(st.session_state.item_number)))
    query = st.session_state.get("query")
    if query == "upload":
        return upload  # None after the upload is cleared
    return query


def query_view_ui(index: Index, pixels: np.ndarray, query_label: str | None, caption: str) -> None:
    """The query large, the 32x32 version the search used, and what the code (and PCA) keep of it."""
    pca = index.spaces.get("pca")
    cols = st.columns([2, 1, 2, 2] if pca else [2, 1, 2])
    cols[0].image(upscale(pixels, 256), caption=caption)
    cols[1].image(pixels, caption="32×32, as searched")
    cols[2].image(upscale(index.reconstruct(pixels), 256),
                  caption=f"Auto-encoder: rebuilt from its {index.meta['code_dim']}-d code")
    if pca:
        cols[3].image(upscale(pca.reconstruct(pixels), 256), caption=f"PCA: rebuilt from {pca.pca.n_components} components")
    if query_label:
        st.markdown(f"Query class: **{query_label}**")


def results_ui(index: Index, hits, space: str, query_label: str | None, matches: int | None, per_row: int) -> None:
    title = index.spaces[space].title
    header = f"{title}: {matches}/{len(hits)} share the query's class" if matches is not None else title
    st.subheader(header)
    fmt = index.spaces[space].format_distance
    for row in range(0, len(hits), per_row):
        cols = st.columns(per_row)
        for col, rank in zip(cols, range(row, min(row + per_row, len(hits)))):
            hit = hits[rank]
            same = query_label is not None and hit.label == query_label
            with col:
                st.image(upscale(index.thumbnail(hit.id), 96, frame=MATCH if same else None),
                         caption=f"{'✓ ' if same else ''}#{rank + 1} · {hit.label or 'unlabelled'} · d={fmt(hit.distance)}")
                st.button("more like this", key=f"more_{space}_{rank}", on_click=set_query, args=(hit.id,))


def map_chart(index: Index, space: str, query_id, neighbour_ids) -> alt.LayerChart:
    """Every item a dot coloured by class; the query (star) and its neighbours drawn on top."""
    points = map_points(index, space)
    marked = map_highlights(index, points, query_id, neighbour_ids)
    pick = alt.selection_point(name="pick", fields=["id"], on="click")
    colour = alt.Color("label:N", legend=alt.Legend(title="class", orient="bottom", columns=5))
    axis = alt.Axis(labels=False, ticks=False, title=None, grid=False)
    base = alt.Chart(points).mark_circle(size=5, opacity=0.45).encode(
        alt.X("x:Q", axis=axis), alt.Y("y:Q", axis=axis), colour, tooltip=["id:Q", "label:N"])
    hover = alt.Chart(marked).mark_circle(stroke="white", strokeWidth=0.6).encode(
        x="x:Q", y="y:Q", color=colour,
        size=alt.Size("role:N", scale=alt.Scale(domain=["sample", "neighbour", "query"], range=[18, 90, 400]), legend=None),
        shape=alt.Shape("role:N", scale=alt.Scale(domain=["sample", "neighbour", "query"],
                                                  range=["circle", "diamond", "cross"]), legend=None),
        tooltip=["id:Q", "label:N", "role:N", "image:N"],  # vega-tooltip draws an "image" field as a picture
    ).add_params(pick)
    return alt.layer(base, hover).properties(height=480).interactive()


def map_view(index: Index) -> None:
    if not index.maps:
        st.info("This index has no 2-D maps: rebuild it with scripts/build_index.py (without --no-maps).")
        return
    st.markdown("Each dot is one image, placed by a 2-D map of its code (left) or its pixels (right). "
                "Hover the larger dots for a picture; click one to make it the query.")
    query = st.session_state.get("query")
    query_id = query if isinstance(query, int) and 0 <= query < len(index) else None
    neighbours = [h.id for h in index.search(query_id, k=10).code] if query_id is not None else []
    st.caption(f"Map: {(index.meta['maps'] or {}).get('method', 'method not recorded')}."
               + (f" Query: item {query_id} ({index.label(query_id) or 'unlabelled'}) with its 10 code-space "
                  "neighbours." if query_id is not None else " Pick a query on the Search view, or click a point."))
    for col, space, title in zip(st.columns(2), ("code", "pixel"), ("Code space", "Pixel space")):
        with col:
            st.subheader(title)
            event = st.altair_chart(map_chart(index, space, query_id, neighbours), key=f"map_{space}",
                                    on_select="rerun", selection_mode="pick", width="stretch")
            picked = (event.selection.get("pick") or [{}])[0].get("id") if event else None
            if picked is not None and 0 <= int(picked) < len(index) and int(picked) != query_id:
                set_query(int(picked))
                st.rerun()
    if query_id is not None:
        st.image([upscale(index.thumbnail(i), 64) for i in [query_id] + neighbours],
                 caption=["query"] + [f"#{r + 1}" for r in range(len(neighbours))])


def quality_view(index: Index) -> None:
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
        st.markdown(f"Retrieval on **{s['query_items']:,}** queries from `{s['queries']}` against "
                    f"**{s['database_items']:,}** images of `{s['database']}` (model `{s.get('model', '?')}`); "
                    "a result is relevant when it has the query's class.")
        shown = {key: name for key, name in REPRESENTATIONS.items() if key in report}
        table = pd.DataFrame({name: report[key] for key, name in shown.items()}).T
        if "bytes_per_item" in report:
            table["bytes per image"] = [report["bytes_per_item"].get(key) for key in shown]
        st.dataframe(table.style.format("{:.3f}", subset=[c for c in table.columns if c != "bytes per image"]),
                     key="quality_table")
        st.caption(f"Reconstruction MSE on the queries: {report['reconstruction_mse']:.4f} (pixels in [0, 1]).")
        curves = pd.DataFrame({name: report["precision_curves"][key] for key, name in shown.items()
                               if key in report["precision_curves"]})
        curves.index = np.arange(1, len(curves) + 1)
        st.line_chart(curves, x_label="k", y_label="precision at k")
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
        shown = triples[:6]
        if not shown:
            st.caption("none among the sampled images")
            continue
        for col, (q, x, y) in zip(st.columns(len(shown)), shown):
            col.image([upscale(index.thumbnail(i), 64) for i in (q, x, y)],
                      caption=["query", f"{first}: {index.label(x)}", f"{second}: {index.label(y)}"])


def main() -> None:
    st.set_page_config(page_title="imgsearch: similar images", page_icon="🔎", layout="wide")
    st.title("imgsearch")
    st.caption("Nearest neighbours of an image found in raw pixel space, PCA, and a convolutional auto-encoder's "
               "256-d code (as floats, or as 256 bits), side by side.")
    try:
        read_meta(INDEX_DIR)
        index = load_index(str(resolve(INDEX_DIR)))
    except IndexLoadError as e:
        build_ui(str(e))
        st.stop()
    follow_index(index)
    view = sidebar_ui(index)
    if view == "Map":
        return map_view(index)
    if view == "Quality":
        return quality_view(index)
    query = query_ui(index)
    spaces = spaces_ui(index)
    k = st.slider("Neighbours per space (k)", 1, 50, 10, key="k")
    if query is None:
        st.info("Upload an image or pick one from the collection to search.")
        return
    started = time.perf_counter()
    try:
        results = index.search(query, k=k, spaces=spaces)
    except ImageError as e:
        st.error(str(e))
        return
    except IndexError:  # an item id from before a swap that follow_index could not see (defence in depth)
        st.info("That item is not in the collection any more (the index was rebuilt); pick a new query.")
        return
    took = time.perf_counter() - started
    query_label = index.label(results.query_id) if results.query_id is not None else None
    caption = f"Item {results.query_id}" if results.query_id is not None else f"Upload: {query.name}"
    query_view_ui(index, results.query_pixels, query_label, caption)
    st.caption(f"Searched {len(index):,} images in {len(spaces)} spaces in {took * 1000:.0f} ms"
               + (" (the query itself is left out)." if results.query_id is not None else "."))
    matches = results.agreement(query_label) or {}
    per_row = 5 if len(spaces) <= 2 else 3  # keep thumbnails large enough to see when more spaces share the width
    for col, space in zip(st.columns(len(spaces), gap="large"), spaces):
        with col:
            results_ui(index, results.hits[space], space, query_label, matches.get(space), per_row)


if __name__ == "__main__":
    main()
