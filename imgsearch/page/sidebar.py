"""The sidebar's description of the index: items, collection, model, spaces, and the files the build skipped."""
from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from .common import collection_name, index_dir, public, shown_path

if TYPE_CHECKING:
    from imgsearch.search import Index


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
        st.caption(f"Index directory: `{shown_path(index_dir())}`")
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
