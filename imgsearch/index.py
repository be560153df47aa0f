"""Build an index directory from a collection, publish it atomically, load it back.

The directory's files are listed in layout.py; every registered space (spaces/) adds its own.
`--out data/index` is a symlink to `data/index.builds/<timestamp>-<random>/`. A rebuild writes
a new build directory and only then swaps the symlink with one atomic rename, so a reader never
sees a half-written index and a running app keeps its already-open files.

Builds into one `--out` take turns: each holds `.<out name>.lock` (next to the builds folder)
from start to publication, so a second build waits, or (`wait=False`, the page) refuses with
one sentence. Under that lock a build also removes what killed builds left behind.

meta.json records the size and sha256 of every other file of the build; `Index.load` checks
them before reading anything, because a damaged Annoy file can crash the process instead of
raising, and damaged pixels or labels would silently give wrong answers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from . import layout
from .data import DATA_DIR, Collection, load_collection
from .images import PREPROCESSING
from .model import encode_pixels, load_checkpoint
from .projection import LANDMARKS, collection_maps
from .spaces import SPACES, BuildInput, SpaceError
from .spaces.code import N_TREES, SEARCH_K, SEED

DEFAULT_INDEX = DATA_DIR / "index"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"
MAP_METHOD = f"t-SNE of {LANDMARKS} landmarks, other points placed among their nearest landmarks (cosine)"

CHECKSUM = "sha256"  # with the CPU's SHA extensions hashlib's sha256 beats blake2b here: about 1 GB/s
HASH_CHUNK = 8 << 20  # one reused 8 MB buffer: large reads, no per-chunk allocation
PRUNE_GRACE_SECONDS = 600  # a build live (or created) this recently may still be loading in another process
BASE_FILES = (layout.MODEL, layout.CODES, layout.PIXELS, layout.LABELS, layout.PATHS)


class IndexLoadError(RuntimeError):
    """An index that cannot be used as asked; the message says why and what to do."""


class BuildBusyError(RuntimeError):
    """Another build into the same index is running (raised only when the caller chose not to wait)."""


def build_index(data: str | Collection = "cifar10", model_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                out: str | os.PathLike = DEFAULT_INDEX, *, spaces: list[str] | None = None,
                options: dict | None = None, n_trees: int = N_TREES, search_k: int = SEARCH_K,
                bits: int | None = None, seed: int = SEED, maps: bool = True, progress: bool = True,
                on_step=None, wait: bool = True) -> dict:
    """Encode a collection, build every space's search structure and publish the index at `out`.

    `spaces` (default: every registered one) and `options` (space name -> keyword options) choose
    what is built; `n_trees`, `search_k` and `bits` are the common options spelled out.
    `on_step(name, fraction)` lets a caller (the app) show progress without tqdm.
    `wait=False` raises BuildBusyError at once when another build into `out` is running.
    """
    step = on_step or (lambda name, frac: None)
    started = time.time()
    names = list(spaces or SPACES)
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        raise ValueError(f"Unknown space {unknown[0]!r}; the spaces are {', '.join(SPACES)}.")
    out = Path(out)
    waiting = (lambda: print(f"Another build of {out} is running; waiting for it to finish.", file=sys.stderr)
               ) if progress else (lambda: step("waiting for another build to finish", 0.0))
    with build_lock(out, wait=wait, on_wait=waiting):
        remove_leftovers(out)
        step("reading the collection", 0.0)
        collection = data if isinstance(data, Collection) else load_collection(data, progress=progress)
        model, info = load_checkpoint(model_path)
        step("encoding", 0.3)
        codes = encode_pixels(model, collection.pixels, progress=progress)
        options = {"code": {"n_trees": n_trees, "search_k": search_k}, **({"bits": {"bits": bits}} if bits else {}),
                   **(options or {})}

        builds = builds_dir(out)
        # The random part keeps two builds started in the same second (or a retry after a crash) apart.
        build_dir = builds / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp_dir = build_dir.with_name(build_dir.name + ".partial")
        tmp_dir.mkdir()
        try:
            np.save(tmp_dir / layout.CODES, codes)
            np.save(tmp_dir / layout.PIXELS, collection.pixels)
            np.save(tmp_dir / layout.LABELS, collection.labels)
            (tmp_dir / layout.PATHS).write_text(json.dumps(collection.paths))
            shutil.copyfile(model_path, tmp_dir / layout.MODEL)
            built, skipped_spaces, space_seconds = {}, {}, {}
            shared = BuildInput(collection.pixels, codes, seed=seed, options=options)
            for n, name in enumerate(names):
                step(f"building the {name} space", 0.4 + 0.35 * n / len(names))
                t = time.time()
                try:
                    built[name] = SPACES[name].build(shared, tmp_dir, **options.get(name, {}))
                except SpaceError as e:
                    skipped_spaces[name] = str(e)
                space_seconds[name] = round(time.time() - t, 2)
            map_seconds = None
            if maps:
                step("mapping the collection in 2-D", 0.75)
                t = time.time()
                for space, xy in collection_maps(codes, collection.pixels, seed=seed).items():
                    np.save(tmp_dir / layout.map_file(space), xy)
                map_seconds = round(time.time() - t, 2)
            step("writing", 0.9)
            meta = {
                "format": layout.FORMAT,
                "items": len(codes),
                "code_dim": int(codes.shape[1]),
                "seed": seed,
                "model": {"fingerprint": info["fingerprint"], "source": str(model_path),
                          "model_args": info["model_args"], "trained_on": info["trained_on"]},
                "collection": collection.spec,
                "classes": collection.classes,
                "skipped": len(collection.skipped),
                "preprocessing": PREPROCESSING,
                "spaces": built,
                "spaces_skipped": skipped_spaces,
                "display": {"thumbnails": layout.PIXELS, "originals": f"{layout.PATHS} (null: no file of its own)"},
                "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "build_seconds": None,
                "space_seconds": space_seconds,
                "maps": {"method": MAP_METHOD, "seconds": map_seconds} if maps else None,
                "checksums": {p.name: {"bytes": p.stat().st_size, CHECKSUM: file_checksum(p)}
                              for p in sorted(tmp_dir.iterdir()) if p.name != layout.META},
            }
            meta["build_seconds"] = round(time.time() - started, 2)
            (tmp_dir / layout.META).write_text(json.dumps(meta, indent=1))
            tmp_dir.rename(build_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        _publish(build_dir, out)
    step("done", 1.0)
    return {"index": str(out), "build_dir": str(build_dir), "items": len(codes), "skipped": collection.skipped,
            "spaces": list(built), "spaces_skipped": skipped_spaces, "seconds": round(time.time() - started, 2)}


def builds_dir(out: Path) -> Path:
    return out.parent / (out.name + ".builds")


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def build_lock(out: str | os.PathLike, *, wait: bool = True, on_wait=None):
    """Hold the build lock of `out` (an flock: the kernel releases it when its holder dies, even by SIGKILL)."""
    out = Path(out)
    builds_dir(out).mkdir(parents=True, exist_ok=True)
    # Never deleted: removing a lock file while another process waits on it would let two builds in.
    with open(lock_path(out), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if not wait:
                raise BuildBusyError(f"Another build into {out.name} is running; "
                                     "try again when it has finished.") from None
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_leftovers(out: Path) -> None:
    """What killed builds left: half-written `.partial` folders and temporary links. Call under the build lock,
    which guarantees that no live build owns them."""
    builds = builds_dir(out)
    for p in builds.glob("*.partial"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{out.name}.link-*"):
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)


def publish(build_dir: Path, out: Path, keep: int = 2) -> None:
    """Point `out` at `build_dir` with one atomic rename, then prune old builds (under the build lock)."""
    with build_lock(out):
        _publish(Path(build_dir), Path(out), keep)


def _publish(build_dir: Path, out: Path, keep: int = 2) -> None:
    out = Path(out)
    previous = None
    if out.is_symlink():
        previous = resolve(out)
    elif out.exists():
        # An index directory from elsewhere: move it among the builds so `out` can become a link.
        previous = build_dir.parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-moved"
        out.rename(previous)
    link_tmp = out.with_name(f".{out.name}.link-{uuid.uuid4().hex}")
    link_tmp.symlink_to(os.path.relpath(build_dir.resolve(), out.parent.resolve()))
    os.replace(link_tmp, out)
    if previous is not None and previous.is_dir():
        # Its age for pruning starts now, when readers stop being sent to it, not when it was built.
        os.utime(previous)
    prune(build_dir.parent, protect=[build_dir, previous], keep=keep)


def prune(builds: Path, protect: list, keep: int = 2, grace: float = PRUNE_GRACE_SECONDS) -> list[Path]:
    """Delete old builds; returns them. Never the protected ones (the live build and the one before it), the
    newest `keep - 2` others, or any build touched in the last `grace` seconds: a process that resolved the
    link to it just before a swap may still be loading it (Linux keeps files that are already open alive)."""
    keep_set = {Path(p).resolve() for p in protect if p is not None}
    others = [p for p in builds.iterdir()
              if p.is_dir() and not p.is_symlink() and not p.name.endswith(".partial") and p.resolve() not in keep_set]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    now, removed = time.time(), []
    for old in others[max(keep - len(keep_set), 0):]:
        if now - old.stat().st_mtime >= grace:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def resolve(index_dir: str | os.PathLike = DEFAULT_INDEX) -> Path:
    """The build directory an index path points at right now (follow the symlink once)."""
    return Path(os.path.realpath(index_dir))


def file_checksum(path: str | os.PathLike) -> str:
    """The file's sha256 in hex, read in large chunks into one buffer."""
    h = hashlib.new(CHECKSUM)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def verify_checksums(index_dir: str | os.PathLike, meta: dict, shown: str | os.PathLike | None = None) -> None:
    """Every file meta.json lists has the size and checksum recorded at build time, or IndexLoadError."""
    index_dir = Path(index_dir)
    for name, want in meta["checksums"].items():
        path = index_dir / name
        try:
            ok = path.stat().st_size == want["bytes"] and file_checksum(path) == want[CHECKSUM]
        except OSError:
            ok = False
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


# Settings the built-in spaces read when they load, with the test each value must pass.
SPACE_SETTINGS = {"code": {"n_trees": _int, "search_k": lambda x: _int(x, 1), "ann_bytes": _int}}


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
            _file_name(k) and isinstance(v, dict) and _int(v.get("bytes")) and isinstance(v.get(CHECKSUM), str)
            for k, v in x.items()), f"an object giving each file's bytes and {CHECKSUM}"),
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
    for key, ok in SPACE_SETTINGS.get(name, {}).items():
        if key not in settings:
            return f"has no {key} setting"
        if not ok(settings[key]):
            return f"has an unusable {key} setting ({str(settings[key])[:40]!r})"
    return None
