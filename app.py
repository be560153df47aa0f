"""imgsearch: find similar images in pixel space and in the auto-encoder's code space.

    streamlit run app.py          (IMGSEARCH_INDEX=DIR opens another index; default data/index)

The page: main() draws the title and the view switch, loads the index and hands it to a view; each view
is a module of imgsearch/page/, and everything computed comes from the imgsearch package. Visitors are
not trusted (README, "Security"): they see sentences, collection names and relative paths, never the
server's folders, and can build an index only when the operator starts the server with
IMGSEARCH_BUILD_ROOT=DIR, and then only from folders inside DIR.
"""
from __future__ import annotations

import streamlit as st

from imgsearch.page.build_view import build_ui
from imgsearch.page.common import follow_index, index_dir, load_index
from imgsearch.page.duplicates_view import duplicates_view
from imgsearch.page.map_view import map_view
from imgsearch.page.quality_view import quality_view
from imgsearch.page.search_view import search_view, upload_ui
from imgsearch.page.sidebar import sidebar_ui
from imgsearch.page.warm import warm_up

VIEWS = {"Search": search_view, "Map": map_view, "Quality": quality_view, "Duplicates": duplicates_view}


def main() -> None:
    st.set_page_config(page_title="imgsearch: similar images", page_icon="🔎", layout="wide")
    st.title("imgsearch")
    st.caption("Nearest neighbours of an image found in raw pixel space, PCA, and a convolutional auto-encoder's "
               "256-d code (as floats, or as 256 bits), side by side.")
    # Drawn before the package is imported and the index loaded (seconds on a cold server: torch); cleared
    # again when there turns out to be no usable index.
    nav = st.sidebar.empty()
    view = nav.radio("View", list(VIEWS), key="view", horizontal=True)
    top = st.empty()
    pick_col = None
    if view == "Search":
        with top.container():
            upload_col, pick_col = st.columns(2)
            upload_ui(upload_col)
    from imgsearch.integrity import IndexLoadError, read_meta
    from imgsearch.publish import resolve

    try:
        read_meta(index_dir())
        index = load_index(str(resolve(index_dir())))
    except IndexLoadError as e:
        nav.empty()
        top.empty()
        build_ui(str(e))
        st.stop()
    follow_index(index)
    warm_up(str(index.path))
    sidebar_ui(index)
    if view == "Search":
        return search_view(index, pick_col)
    return VIEWS[view](index)


if __name__ == "__main__":
    main()
