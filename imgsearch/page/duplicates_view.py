"""The Duplicates view: groups of near-duplicates as rows of pictures, the keeper marked, with a threshold
slider and a CSV download."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from .common import shown_path

if TYPE_CHECKING:
    from imgsearch.search import Index


GROUPS_SHOWN, GROUP_PICTURES = 20, 12  # the Duplicates view draws this many groups, this many pictures each


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
    from imgsearch.search import printable

    items = group.items[:GROUP_PICTURES]
    captions = [("★ keep · " if it.id == group.keep else "") + (printable(it.name) if it.name else f"item {it.id}") + " · " +
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
