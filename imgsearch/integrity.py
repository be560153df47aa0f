"""What makes an index trustworthy before it is read: meta.json's schema, and a checksum per file.

meta.json records the size and checksum of every other file of the build; `Index.load` checks
them before reading anything, because a damaged Annoy file can crash the process instead of
raising, and damaged pixels or labels would silently give wrong answers. The schema below checks
every key the loader uses, with its type, so a damaged meta.json is one sentence, not a KeyError.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from . import layout
from .spaces import SPACES
from .spaces.backends import CODE_INDEXES, RETIRED, structure_of

# The checksums guard against damage (flipped bytes, a truncated copy), not against an adversary, so a
# non-cryptographic 128-bit hash does: xxh3 read 4.3 GB/s on one core here where sha256 read 0.95 GB/s
# (with the CPU's SHA extensions; without them sha256 is slower still, while xxh3's SSE2 code is what
# every x86-64 machine runs). At a million items (7.2 GB) a load's hashing fell from ~5 s to 1-4 s, the
# upper end when the files must come from disk.
CHECKSUM = "xxh3_128"
HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}  # sha256: what builds before xxh3 recorded
CHECKSUM_THREADS = min(4, os.cpu_count() or 1)
HASH_CHUNK = 8 << 20  # one reused 8 MB buffer: large reads, no per-chunk allocation
BASE_FILES = (layout.MODEL, layout.CODES, layout.PIXELS, layout.LABELS, layout.PATHS)


class IndexLoadError(RuntimeError):
    """An index that cannot be used as asked; the message says why and what to do."""


def file_checksum(path: str | os.PathLike, algorithm: str = CHECKSUM) -> str:
    """The file's checksum in hex, read in large chunks into one buffer."""
    h = HASHES[algorithm]()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def verify_checksums(index_dir: str | os.PathLike, meta: dict, shown: str | os.PathLike | None = None,
                     names=None) -> None:
    """Every file meta.json lists (or those of them in `names`) has the size and checksum recorded at
    build time, or IndexLoadError."""
    index_dir = Path(index_dir)
    files = [(name, want) for name, want in meta["checksums"].items() if names is None or name in names]

    def intact(item) -> bool:
        name, want = item
        path = index_dir / name
        try:
            algorithm = next(a for a in HASHES if a in want)
            return path.stat().st_size == want["bytes"] and file_checksum(path, algorithm) == want[algorithm]
        except OSError:
            return False

    # hashlib and file reads release the GIL: at a million items (~8 GB of files) two threads halve the wait.
    with ThreadPoolExecutor(CHECKSUM_THREADS) as pool:
        results = list(pool.map(intact, files))
    for (name, _), ok in zip(files, results):
        if not ok:
            raise IndexLoadError(f"{name} in the index at {shown or index_dir} is missing or corrupt (it does not match "
                                 "the checksum recorded when the index was built); rebuild it with `imgsearch build-index`.")


def read_meta(index_dir: str | os.PathLike) -> dict:
    """meta.json, checked against the schema below: one IndexLoadError sentence for the first thing wrong."""
    path = Path(index_dir) / layout.META
    if not path.is_file():
        raise IndexLoadError(f"No index at {index_dir}; build one with `imgsearch build-index` (scripts/build_index.py).")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise IndexLoadError(f"{path} is corrupt; rebuild the index with `imgsearch build-index`.") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in layout.OLD_FORMATS:
        raise IndexLoadError(f"{index_dir} was built by an older imgsearch ({fmt}, without the pca and bits spaces); "
                             "rebuild it with `imgsearch build-index` (the same --data and --out).")
    if fmt != layout.FORMAT:
        raise IndexLoadError(f"{index_dir} is not an {layout.FORMAT} index; rebuild it with `imgsearch build-index`.")
    problem = meta_problem(meta)
    if problem:
        raise IndexLoadError(f"{path} is damaged: {problem}; rebuild the index with `imgsearch build-index`.")
    return meta


# ---- the schema of meta.json ---------------------------------------------------------------

def _int(x, least: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def _file_name(x) -> bool:
    """A plain name inside the build directory: meta.json must not point the loader at other files."""
    return isinstance(x, str) and bool(re.fullmatch(r"[\w.-]+", x)) and x not in (".", "..")


# A space in Milvus (spaces/milvus.py) reads these; the code space's structures name theirs (CodeIndex.checks).
MILVUS_SETTINGS = {"uri": lambda x: isinstance(x, str) and len(x) > 0,
                   "collection": lambda x: isinstance(x, str) and bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", x)),
                   "search_params": lambda x: isinstance(x, dict)}


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a parsed meta.json, in a few words, or None."""
    for key, ok, want in (
        ("items", lambda x: _int(x, 1), "a whole number of at least 1"),
        ("code_dim", lambda x: _int(x, 1), "a whole number of at least 1"),
        ("classes", lambda x: isinstance(x, list) and all(isinstance(c, str) for c in x) and len(set(x)) == len(x),
         "a list of distinct class names"),
        ("collection", lambda x: isinstance(x, str), "a string"),
        ("built_at", lambda x: isinstance(x, str), "a string"),
        ("skipped", _int, "a whole number"),
        ("model", lambda x: isinstance(x, dict) and isinstance(x.get("fingerprint"), str)
         and isinstance(x.get("trained_on"), dict), "an object with a fingerprint string and a trained_on object"),
        ("preprocessing", lambda x: isinstance(x, dict) and _int(x.get("size"), 1), "an object with a size"),
        ("spaces", lambda x: isinstance(x, dict) and len(x) > 0 and all(isinstance(s, dict) for s in x.values()),
         "an object with a section per space"),
        ("maps", lambda x: x is None or (isinstance(x, dict) and isinstance(x.get("method"), str)),
         "null or an object with a method"),
        ("checksums", lambda x: isinstance(x, dict) and all(
            _file_name(k) and isinstance(v, dict) and _int(v.get("bytes"))
            and any(isinstance(v.get(a), str) for a in HASHES) for k, v in x.items()),
         f"an object giving each file's bytes and {CHECKSUM}"),
    ):
        if key not in meta:
            return ("it records no checksums (it was built by an earlier version)" if key == "checksums"
                    else f"the key {key!r} is missing")
        if not ok(meta[key]):
            return f"{key!r} must be {want}"
    listed = set(meta["checksums"])
    missing = [f for f in BASE_FILES if f not in listed]
    if missing:
        return f"it records no checksum for {missing[0]}"
    for name, section in meta["spaces"].items():
        problem = space_problem(name, section, listed)
        if problem:
            return f"the {name} space's section {problem}"
    return None


def space_problem(name: str, section: dict, listed: set[str]) -> str | None:
    if not isinstance(section.get("metric"), str):
        return "has no metric"
    cls = SPACES.get(name)
    if cls is not None and section["metric"] != cls.metric:
        return f"names the metric {section['metric'][:40]!r}, but this space measures {cls.metric!r}"
    if not (_int(section.get("dims"), 1) or _int(section.get("bits"), 1)):
        return "gives neither dims nor bits as a whole number"
    files = section.get("files")
    if not isinstance(files, list) or not all(_file_name(f) for f in files):
        return "must list its files by name"
    unchecked = [f for f in files if f not in listed]
    if unchecked:
        return f"lists {unchecked[0]}, which has no checksum"
    settings = section.get("settings")
    if not isinstance(settings, dict):
        return "has no settings object"
    backend = settings.get("backend")
    if backend not in (None, "annoy", "local", "milvus"):
        return f"names the backend {str(backend)[:40]!r}, which this version does not know"
    structure = structure_of(settings) if name == "code" else None
    if structure is not None and structure not in CODE_INDEXES and structure not in RETIRED:
        return f"names the structure {structure[:40]!r}, which this version does not know"
    required = (CODE_INDEXES[structure].checks if structure in CODE_INDEXES
                else MILVUS_SETTINGS if backend == "milvus" else {})
    for key, ok in required.items():
        if key not in settings:
            return f"has no {key} setting"
        if not ok(settings[key]):
            return f"has an unusable {key} setting ({str(settings[key])[:40]!r})"
    return None
