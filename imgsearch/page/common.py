"""What every view of the page shares: the index it serves (loaded once per process and build), what a
visitor may see of server paths, and the session state that belongs to one build."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from imgsearch.data import DATA_DIR

if TYPE_CHECKING:
    from imgsearch.search import Index

ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/[^\s`'\"()\[\]{},;]*")
# Session keys that hold item ids, classes or space names of one build: cleared when the index is swapped.
INDEX_STATE = ("query", "item_number", "pick_class", "spaces", "map_code", "map_pixel", "quality_class",
               "quality_first", "quality_second", "between", "directions_class", "filter_folders",
               "filter_classes", "opened", "dup_space")
# Per space: the cutoff's switch and value, and the duplicates threshold, whose ranges are the build's.
CUTOFF_KEYS = ("cutoff_on_", "cutoff_", "dup_threshold_")


def index_dir() -> str:
    """The index the page serves (IMGSEARCH_INDEX; default data/index). Read at each run, not at import:
    a module is imported once per server, while the environment is the operator's to set."""
    return os.environ.get("IMGSEARCH_INDEX", str(DATA_DIR / "index"))  # publish.DEFAULT_INDEX, without torch


def build_root() -> str | None:
    """IMGSEARCH_BUILD_ROOT: the only folder visitors may build an index from; unset, the page cannot build."""
    return os.environ.get("IMGSEARCH_BUILD_ROOT") or None


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


def shown_path(path: str) -> str:
    """A server path as a visitor may see it: relative to the build root or the working directory, else its name."""
    p = Path(os.path.normpath(path))
    for base in ([Path(build_root()).resolve()] if build_root() else []) + [Path.cwd().resolve()]:
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
