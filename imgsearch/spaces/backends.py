"""Where the code and bits spaces search, in one table each, by name.

The code space's structures implement `code_index.CodeIndex`. Adding one: write a module with a
`CodeIndex` subclass and add it to the tuple below (or call `register_code_index` from your own
code); `build-index --code-index NAME` then builds it, meta.json records NAME, and `Index.load`
finds it again by that name. The spaces look their backends up here and never import them.
"""
from __future__ import annotations

from .annoy_index import AnnoyTrees
from .code_index import CodeIndex
from .faiss_index import FaissGraph, FaissLists
from .milvus import MilvusBits, MilvusCodeIndex

CODE_INDEXES: dict[str, type[CodeIndex]] = {cls.name: cls for cls in (AnnoyTrees, FaissLists, FaissGraph, MilvusCodeIndex)}
CODE_INDEX = AnnoyTrees.name  # the default: the design card's Annoy (docs/speed.md compares the others)
# Structures an index built by an earlier version used, with what to do about them.
RETIRED = {"ivf": "it is built on the hand-made inverted file, which faiss's lists replaced"}
BITS_BACKENDS = {MilvusBits.title.lower(): MilvusBits}  # the bits elsewhere than in this process


def register_code_index(cls: type[CodeIndex]) -> type[CodeIndex]:
    """Add a code space structure to the table (usable as a class decorator)."""
    CODE_INDEXES[cls.name] = cls
    return cls


def local_code_indexes() -> list[str]:
    """The structures whose files live in the index directory: `build-index --code-index`'s choices."""
    return [name for name, cls in CODE_INDEXES.items() if cls.local]


def structure_of(settings: dict) -> str:
    """The name of the structure a code space section was built on (Annoy's for builds that recorded none)."""
    if settings.get("backend") == MilvusCodeIndex.name:
        return MilvusCodeIndex.name
    return str(settings.get("structure", AnnoyTrees.name))
