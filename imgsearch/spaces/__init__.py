"""Search spaces, in one table. Each is a `Space` (see base.py): a name, a metric, how it embeds
a query, how it builds and reads its files in the index directory, and `search(vector, k)`.

Adding a space: write a module with a `Space` subclass, and add it to the tuple below (or call
`register_space` from your own code). Every index built afterwards includes it; `Index.search`,
`imgsearch search --spaces`, the page's columns and the evaluation pick it up by name.
"""
from __future__ import annotations

from .base import BuildInput, LoadInput, Query, Reuse, Space, SpaceError, SpaceUnavailable
from .bits import BitsSpace
from .code import CodeSpace
from .pca import PcaSpace
from .pixel import PixelSpace

SPACES: dict[str, type[Space]] = {cls.name: cls for cls in (PixelSpace, PcaSpace, CodeSpace, BitsSpace)}
DEFAULT_SPACES = ("pixel", "code")  # the comparison the page opens with: what the learned code buys over pixels


def register_space(cls: type[Space]) -> type[Space]:
    """Add a space to the table (usable as a class decorator)."""
    SPACES[cls.name] = cls
    return cls


__all__ = ["SPACES", "DEFAULT_SPACES", "register_space", "Space", "SpaceError", "SpaceUnavailable", "Reuse",
           "BuildInput", "LoadInput", "Query"]
