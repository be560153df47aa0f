"""The page without a usable index: why, and (only when the operator allows it) a form to build one from a
folder inside IMGSEARCH_BUILD_ROOT."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from .common import build_root, index_dir, public


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
    if not build_root():
        st.caption("Building an index from this page is off. The operator can build one with "
                   "`imgsearch build-index`, or allow building from the folders inside one directory by "
                   "starting the server with IMGSEARCH_BUILD_ROOT=DIR.")
        return
    from imgsearch.data import CollectionError
    from imgsearch.index import build_index, BuildError
    from imgsearch.model import DEFAULT_CHECKPOINT, CheckpointError
    from imgsearch.publish import BuildBusyError

    root = Path(build_root()).resolve()
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
            summary = build_index(str(folder), DEFAULT_CHECKPOINT, index_dir(), progress=False, wait=False,
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
