"""imgsearch: find similar images in pixel space and in the auto-encoder's code space.

    streamlit run app.py          (IMGSEARCH_INDEX=DIR opens another index; default data/index)

Only widgets and pictures live here; everything computed comes from the imgsearch package.
"""
import os
import time

import numpy as np
import streamlit as st

from imgsearch.data import OFFLINE_HINT, CollectionError
from imgsearch.images import ImageError, upscale
from imgsearch.index import DEFAULT_CHECKPOINT, DEFAULT_INDEX, IndexLoadError, build_index, read_meta, resolve
from imgsearch.model import CheckpointError
from imgsearch.search import Index

INDEX_DIR = os.environ.get("IMGSEARCH_INDEX", str(DEFAULT_INDEX))
MATCH = (34, 160, 70)  # frame colour of a result that shares the query's class
PER_ROW = 5  # results per row in each column


@st.cache_resource(show_spinner="Loading the model and the index…", max_entries=1)
def load_index(build_dir: str) -> Index:
    """Keyed by the build directory the index link points at, so a rebuild is picked up on the next run."""
    return Index.load(build_dir)


def build_ui(reason: str) -> None:
    """No usable index: say why in one sentence and offer to build one."""
    st.info(reason)
    data = st.text_input("Collection to index: `cifar10` (downloads it) or a folder of images",
                         value="cifar10", key="build_data", help=f"Offline? Try {OFFLINE_HINT}")
    if st.button("Build the index", key="build", type="primary"):
        bar = st.progress(0.0, text="starting…")
        try:
            summary = build_index(data, DEFAULT_CHECKPOINT, INDEX_DIR, progress=False,
                                  on_step=lambda name, frac: bar.progress(frac, text=name))
        except (CollectionError, CheckpointError) as e:
            st.error(str(e))
            return
        st.success(f"Indexed {summary['items']} images in {summary['seconds']:.0f} s"
                   + (f" ({len(summary['skipped'])} unreadable files skipped)." if summary["skipped"] else "."))
        st.rerun()


def sidebar_ui(index: Index) -> None:
    m = index.meta
    with st.sidebar:
        st.header("Index")
        st.markdown(
            f"- **{m['items']:,}** images from `{m['collection']}`\n"
            f"- model `{m['model']['fingerprint']}`, {m['code_dim']}-d codes, "
            f"trained on `{m['model']['trained_on'].get('collection', '?')}`\n"
            f"- built {m['built_at']}\n"
            f"- code metric **{m['metric']}**, n_trees {m['n_trees']}, search_k {m['search_k']:,}\n"
            f"- pixel metric: {m['pixel_metric']}"
            + (f"\n- {m['skipped']} unreadable files skipped" if m.get("skipped") else "")
        )
        st.caption(f"Index directory: `{INDEX_DIR}`")


def set_query(item: int) -> None:
    st.session_state.query = item
    st.session_state.item_number = item


def query_ui(index: Index):
    """Upload or pick from the collection; returns the current query (an item id or an upload) or None."""
    rng = np.random.default_rng()
    upload_col, pick_col = st.columns(2)
    with upload_col:
        upload = st.file_uploader("Upload an image", key="upload",
                                  type=["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"],
                                  on_change=lambda: st.session_state.update(query="upload"))
    with pick_col:
        st.markdown("**…or pick one from the collection**")
        a, b, c = st.columns([1, 1.4, 1.2])
        a.button("Random", key="random", on_click=lambda: set_query(index.random_item(rng)))
        if index.classes:
            label = b.selectbox("Class", index.classes, key="pick_class", label_visibility="collapsed")
            b.button(f"Random {label}", key="random_class", on_click=lambda: set_query(index.random_item(rng, label)))
        c.number_input("Item number", 0, len(index) - 1, key="item_number", step=1,
                       on_change=lambda: st.session_state.update(query=int(st.session_state.item_number)))
    query = st.session_state.get("query")
    if query == "upload":
        return upload  # None after the upload is cleared
    return query


def query_view_ui(index: Index, pixels: np.ndarray, query_label: str | None, caption: str) -> None:
    """The query large, the 32x32 version the search used, and what the code keeps of it."""
    big, small, recon = st.columns([2, 1, 2])
    big.image(upscale(pixels, 256), caption=caption)
    small.image(pixels, caption="32×32, as searched")
    recon.image(upscale(index.reconstruct(pixels), 256), caption=f"Reconstruction from its {index.meta['code_dim']}-d code")
    if query_label:
        st.markdown(f"Query class: **{query_label}**")


def results_ui(index: Index, hits, space: str, title: str, query_label: str | None) -> None:
    matches = sum(h.label == query_label for h in hits) if query_label else None
    header = f"{title}: {matches}/{len(hits)} share the query's class" if matches is not None else title
    st.subheader(header)
    for row in range(0, len(hits), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, rank in zip(cols, range(row, min(row + PER_ROW, len(hits)))):
            hit = hits[rank]
            same = query_label is not None and hit.label == query_label
            with col:
                st.image(upscale(index.thumbnail(hit.id), 96, frame=MATCH if same else None),
                         caption=f"{'✓ ' if same else ''}#{rank + 1} · {hit.label or 'unlabelled'} · d={hit.distance:.3f}")
                st.button("more like this", key=f"more_{space}_{rank}", on_click=set_query, args=(hit.id,))


def main() -> None:
    st.set_page_config(page_title="imgsearch: similar images", page_icon="🔎", layout="wide")
    st.title("imgsearch")
    st.caption("Nearest neighbours of an image found in raw pixel space and in a convolutional auto-encoder's "
               "256-d code space, side by side.")
    try:
        read_meta(INDEX_DIR)
        index = load_index(str(resolve(INDEX_DIR)))
    except IndexLoadError as e:
        build_ui(str(e))
        st.stop()
    sidebar_ui(index)
    query = query_ui(index)
    k = st.slider("Neighbours per space (k)", 1, 50, 10, key="k")
    if query is None:
        st.info("Upload an image or pick one from the collection to search.")
        return
    started = time.perf_counter()
    try:
        results = index.search(query, k=k)
    except ImageError as e:
        st.error(str(e))
        return
    took = time.perf_counter() - started
    query_label = index.label(results.query_id) if results.query_id is not None else None
    caption = f"Item {results.query_id}" if results.query_id is not None else f"Upload: {query.name}"
    query_view_ui(index, results.query_pixels, query_label, caption)
    st.caption(f"Searched {len(index):,} images in {took * 1000:.0f} ms"
               + (" (the query itself is left out)." if results.query_id is not None else "."))
    pixel_col, code_col = st.columns(2, gap="large")
    with pixel_col:
        results_ui(index, results.pixel, "pixel", "Pixel space", query_label)
    with code_col:
        results_ui(index, results.code, "code", "Code space", query_label)


if __name__ == "__main__":
    main()
