"""Build an index directory from a collection, publish it atomically, load it back.

The directory's files are listed in layout.py; every registered space (spaces/) adds its own.
`--out data/index` is a symlink to `data/index.builds/<timestamp>-<random>/`. A rebuild writes
a new build directory and only then swaps the symlink with one atomic rename, so a reader never
sees a half-written index and a running app keeps its already-open files.

Builds into one `--out` take turns: each holds `.<out name>.lock` (next to the builds folder)
from start to publication, so a second build waits, or (`wait=False`, the page) refuses with
one sentence. Under that lock a build also removes what killed builds left behind.

meta.json records the size and checksum of every other file of the build; `Index.load` checks
them before reading anything, because a damaged Annoy file can crash the process instead of
raising, and damaged pixels or labels would silently give wrong answers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xxhash

from . import layout
from .data import DATA_DIR, Collection, CollectionError, skipped_summary
from .images import PREPROCESSING
from .ingest import (BATCH, batch_file, batch_rows, encoding_workers, ingest, local_batches, read_batch, reads_files,
                     source_of)
from .model import load_checkpoint
from .projection import LANDMARKS, collection_maps, extend_maps
from .spaces import SPACES, BuildInput, Reuse, SpaceError
from .spaces.code import CODE_INDEX, CODE_INDEXES, N_TREES, PROBES, SEARCH_K, SEED
from .tables import NpyWriter, let_go

DEFAULT_INDEX = DATA_DIR / "index"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"
MAP_METHOD = f"t-SNE of {LANDMARKS} landmarks, other points placed among their nearest landmarks (cosine)"

# The checksums guard against damage (flipped bytes, a truncated copy), not against an adversary, so a
# non-cryptographic 128-bit hash does: xxh3 read 4.3 GB/s on one core here where sha256 read 0.95 GB/s
# (with the CPU's SHA extensions; without them sha256 is slower still, while xxh3's SSE2 code is what
# every x86-64 machine runs). At a million items (7.2 GB) a load's hashing fell from ~5 s to 1-4 s, the
# upper end when the files must come from disk.
CHECKSUM = "xxh3_128"
HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}  # sha256: what builds before xxh3 recorded
CHECKSUM_THREADS = min(4, os.cpu_count() or 1)
HASH_CHUNK = 8 << 20  # one reused 8 MB buffer: large reads, no per-chunk allocation
PRUNE_GRACE_SECONDS = 600  # a build live (or created) this recently may still be loading in another process
BASE_FILES = (layout.MODEL, layout.CODES, layout.PIXELS, layout.LABELS, layout.PATHS)


class IndexLoadError(RuntimeError):
    """An index that cannot be used as asked; the message says why and what to do."""


class BuildBusyError(RuntimeError):
    """Another build into the same index is running (raised only when the caller chose not to wait)."""


class DiskFullError(CollectionError):
    """The disk filled up during a build: the live index is untouched and the work folder can be resumed."""


def stops_on_full_disk(build):
    """A build that meets a full disk (or quota) stops with one sentence instead of a traceback. Nothing is
    lost: the half-written build folder is removed on the way out, the live index was never touched, and
    the batches finished so far stay in the work folder, so the same command continues from them."""
    @functools.wraps(build)
    def guarded(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DiskFullError("The disk filled up while the index was being built (no space left); the index "
                                "in use is unchanged: free some space and run the same command again, it "
                                "continues from the batches already finished.") from None
    return guarded


@stops_on_full_disk
def build_index(data: str | Collection = "cifar10", model_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                out: str | os.PathLike = DEFAULT_INDEX, *, spaces: list[str] | None = None,
                options: dict | None = None, code_index: str = CODE_INDEX, probes: int = PROBES,
                n_trees: int = N_TREES, search_k: int = SEARCH_K, bits: int | None = None, seed: int = SEED,
                maps: bool = True, progress: bool = True, on_step=None, wait: bool = True, update: bool = False,
                batch_size: int = BATCH, batches=None) -> dict:
    """Encode a collection, build every space's search structure and publish the index at `out`.

    `spaces` (default: every registered one) and `options` (space name -> keyword options) choose
    what is built; `code_index` (the code space's lists, "ivf", or Annoy's trees, "annoy"), `probes`
    (the lists'), `n_trees` and `search_k` (Annoy's) and `bits` are the common options spelled out.
    Items are read and encoded in batches (ingest.py): memory does not grow with the collection,
    and a build killed at any point resumes from its last finished batch when run again.
    `update=True` keeps the items of the index at `out` whose files are unchanged (same path,
    size and modification time), encodes only new and changed files, drops items whose files
    are gone, and lets each space carry the previous build over (`spaces.Reuse`: fitted PCA and
    rotation, kept rows, the lists' centres, Annoy's trees) instead of building from scratch.
    `on_step(name, fraction)` lets a caller (the app) show progress without tqdm.
    `wait=False` raises BuildBusyError at once when another build into `out` is running.
    `batches` replaces the local decode-and-encode pipeline (`ingest.local_batches`), e.g. by Ray's.
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
        model, info = load_checkpoint(model_path)
        # The workers start before the collection is listed, so they do not share (and count) the listing.
        local = batches is None and reads_files(data)
        with encoding_workers(model) if local else contextlib.nullcontext() as pool:
            step("reading the collection", 0.0)
            source = source_of(data)
            previous = Previous.of(out, source, info) if update else None
            todo = source if previous is None else source.subset(previous.new_rows)
            builds = builds_dir(out)
            # One resumable work folder per set of inputs; an unfinished build with other inputs is abandoned.
            work = builds / f"{todo.key(info['fingerprint'], batch_size)[:20]}.work"
            for stale in builds.glob("*.work"):
                if stale != work:
                    shutil.rmtree(stale, ignore_errors=True)
            step("decoding and encoding", 0.05)
            ingested = ingest(todo, model, work, batch_size=batch_size, progress=progress,
                              batches=functools.partial(local_batches, pool=pool) if local else batches,
                              on_step=lambda f: step("decoding and encoding", 0.05 + 0.5 * f))
        del model  # the spaces need only the codes: free its memory for theirs
        options = {"code": {"structure": code_index, "probes": probes, "n_trees": n_trees, "search_k": search_k},
                   **({"bits": {"bits": bits}} if bits else {}), **(options or {})}

        # The random part keeps two builds started in the same second (or a retry after a crash) apart.
        build_dir = builds / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp_dir = build_dir.with_name(build_dir.name + ".partial")
        tmp_dir.mkdir()
        try:
            step("writing the item files", 0.55)
            items, skipped = assemble(tmp_dir, work, todo, previous, source, ingested["batch_size"],
                                      int(info["model_args"]["code_dim"]))
            skipped = source.skipped + skipped  # what the listing could not read, then what could not be decoded
            if items == 0:
                raise CollectionError(f"{source.spec} holds no readable images ({len(skipped)} files skipped).")
            shutil.copyfile(model_path, tmp_dir / layout.MODEL)
            # Memory-mapped: the spaces read the stores in passes, so a million items never sit in memory twice.
            codes = np.load(tmp_dir / layout.CODES, mmap_mode="r")
            pixels = np.load(tmp_dir / layout.PIXELS, mmap_mode="r")
            reuse = previous.reuse() if previous else None
            shared = BuildInput(pixels, codes, seed=seed, options=options, previous=reuse, scratch=work)

            def build_space(name: str) -> tuple[dict | str, float]:
                """The space's meta.json section (its SpaceError's sentence when it cannot be built), and seconds."""
                t = time.time()
                try:
                    section = SPACES[name].build(shared, tmp_dir, **options.get(name, {}))
                except SpaceError as e:
                    section = str(e)
                return section, round(time.time() - t, 2)

            # A space that runs on one core is built in a thread beside the others and the maps (each is
            # computed as it would be in turn: the same files).
            with ThreadPoolExecutor(1, thread_name_prefix="space") as beside:
                done = {}
                for n, name in enumerate(names):
                    step(f"building the {name} space", 0.6 + 0.2 * n / len(names))
                    if SPACES[name].builds_beside:
                        done[name] = beside.submit(build_space, name)
                    else:
                        done[name] = build_space(name)
                        let_go(codes, pixels)  # a safety net: whatever a space read outside tables.row_blocks and gather
                map_seconds, maps_carried = None, None
                if maps:
                    step("mapping the collection in 2-D", 0.8)
                    t = time.time()
                    old_maps = reuse and reuse.maps(len(codes))
                    if old_maps:  # an update: the kept items stay where they were, the new ones are placed among them
                        made, maps_carried = extend_maps(old_maps, previous.kept_old, codes, pixels, seed=seed), True
                    else:
                        made = collection_maps(codes, pixels, seed=seed, projected=shared.pixel_projection_if_made())
                    for space, xy in made.items():
                        np.save(tmp_dir / layout.map_file(space), xy)
                    map_seconds = round(time.time() - t, 2)
                done = {name: job if isinstance(job, tuple) else job.result() for name, job in done.items()}
            let_go(codes, pixels)
            built = {name: section for name, (section, _) in done.items() if isinstance(section, dict)}
            skipped_spaces = {name: section for name, (section, _) in done.items() if isinstance(section, str)}
            space_seconds = {name: seconds for name, (_, seconds) in done.items()}
            del codes, pixels, shared
            step("writing", 0.9)
            meta = {
                "format": layout.FORMAT,
                "items": items,
                "code_dim": int(info["model_args"]["code_dim"]),
                "seed": seed,
                "model": {"fingerprint": info["fingerprint"], "source": str(model_path),
                          "model_args": info["model_args"], "trained_on": info["trained_on"]},
                "collection": source.spec,
                "classes": source.classes,
                "skipped": len(skipped),
                "skipped_files": skipped_summary(skipped, source.spec if os.path.isabs(source.spec) else None),
                "preprocessing": PREPROCESSING,
                "spaces": built,
                "spaces_skipped": skipped_spaces,
                "display": {"thumbnails": layout.PIXELS, "originals": f"{layout.PATHS} (null: no file of its own)"},
                "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "build_seconds": None,
                "ingest": ingested,
                "update": previous.summary(items) if previous else None,
                "space_seconds": space_seconds,
                "maps": {"method": MAP_METHOD, "seconds": map_seconds,
                         **({"kept_from": previous.directory.name} if maps_carried else {})} if maps else None,
                "checksums": {p.name: (previous and previous.checksum_of(p))
                              or {"bytes": p.stat().st_size, CHECKSUM: file_checksum(p)}
                              for p in sorted(tmp_dir.iterdir()) if p.name != layout.META},
            }
            meta["build_seconds"] = round(time.time() - started, 2)
            (tmp_dir / layout.META).write_text(json.dumps(meta, indent=1))
            tmp_dir.rename(build_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        _publish(build_dir, out)
        shutil.rmtree(work, ignore_errors=True)  # published: nothing left to resume
    step("done", 1.0)
    return {"index": str(out), "build_dir": str(build_dir), "items": items, "skipped": skipped,
            "spaces": list(built), "spaces_skipped": skipped_spaces, "seconds": round(time.time() - started, 2),
            "update": meta["update"]}


class Previous:
    """For `--update`: the live index at `out`, and which of the collection's files it already holds.

    A file is unchanged when its path, size and modification time match the stored ones; its
    pixels and code are reused. Everything else in the folder is new (or changed) and encoded.
    """

    def __init__(self, directory: Path, meta: dict, kept_old: np.ndarray, kept_rows: np.ndarray,
                 new_rows: np.ndarray, changed: int, removed: int):
        self.directory, self.meta = directory, meta
        self.kept_old, self.kept_rows, self.new_rows = kept_old, kept_rows, new_rows  # old ids; source rows
        self.changed, self.removed = changed, removed

    @classmethod
    def of(cls, out: Path, source, info: dict) -> "Previous":
        if source.pixels is not None:
            raise IndexLoadError("--update needs a folder of images (it compares files by path, size and "
                                 "modification time); CIFAR-10 from torchvision is built whole.")
        directory = resolve(out)
        meta = read_meta(directory)
        if meta["collection"] != source.spec:
            raise IndexLoadError(f"The index at {out} was built from {meta['collection']}, not {source.spec}; "
                                 "build it without --update.")
        if meta["model"]["fingerprint"] != info["fingerprint"]:
            raise IndexLoadError(f"The index at {out} was built by model {meta['model']['fingerprint']}, not "
                                 f"{info['fingerprint']}; its codes cannot be reused: build it without --update.")
        if layout.FILE_STATS not in meta["checksums"]:
            raise IndexLoadError(f"The index at {out} records no file sizes and times (it was built by an earlier "
                                 "version); build it once without --update.")
        verify_checksums(directory, meta, out, names=(layout.CODES, layout.PIXELS, layout.PATHS, layout.FILE_STATS))
        old_paths = json.loads((directory / layout.PATHS).read_text())
        old_stats = np.load(directory / layout.FILE_STATS)
        where = {p: i for i, p in enumerate(old_paths) if p is not None}
        kept_old, kept_rows, new_rows, changed = [], [], [], 0
        for row, (path, stat) in enumerate(zip(source.paths, source.stats)):
            old = where.get(path)
            if old is not None and (old_stats[old] == stat).all():
                kept_old.append(old)
                kept_rows.append(row)
            else:
                new_rows.append(row)
                changed += old is not None
        removed = len(old_paths) - len(kept_old) - changed
        as_ids = lambda x: np.asarray(x, dtype=np.int64)
        return cls(directory, meta, as_ids(kept_old), as_ids(kept_rows), as_ids(new_rows), changed, removed)

    def reuse(self) -> Reuse:
        """What the spaces may carry over from the previous build; each file is checksummed before it is read."""
        return Reuse(self.directory, self.meta, self.kept_old,
                     check=lambda name: verify_checksums(self.directory, self.meta, names=(name,)))

    def checksum_of(self, path: Path) -> dict | None:
        """The recorded checksum of a file the new build shares with the previous one (a hard link)."""
        old = self.directory / path.name
        try:
            same = old.exists() and os.path.samefile(old, path)
        except OSError:
            same = False
        return self.meta["checksums"].get(path.name) if same else None

    def summary(self, items: int) -> dict:
        return {"previous_build": self.directory.name, "unchanged": len(self.kept_old),
                "added": len(self.new_rows) - self.changed, "changed": self.changed, "removed": self.removed,
                "items": items}


ROWS_PER_WRITE = 16384  # rows copied per block when item files are assembled: ~50 MB of pixels


def assemble(tmp_dir: Path, work: Path, todo, previous: Previous | None, source, batch_size: int,
             code_dim: int) -> tuple[int, list]:
    """Write the per-item files (codes, pixels, labels, paths, file stats) into `tmp_dir`, row-aligned:
    first the items kept from the previous index (in their old order), then the encoded batches'
    readable items (in the collection's order). Returns (items, skipped files as (path, why))."""
    n_batches = len(batch_rows(len(todo), batch_size))
    readable, skipped = [], []
    for b in range(n_batches):
        with np.load(batch_file(work, b), allow_pickle=False) as f:  # only these two members are read
            readable.append(f["ok"])
            skipped += [(todo.paths[b * batch_size + i], why) for i, why in json.loads(str(f["errors"]))]
    new_rows = np.flatnonzero(np.concatenate(readable)) if readable else np.empty(0, dtype=np.int64)
    kept = len(previous.kept_old) if previous else 0
    n = kept + len(new_rows)
    rows = np.concatenate([previous.kept_rows, previous.new_rows[new_rows]]) if previous else new_rows
    writers = {name: NpyWriter(tmp_dir / name, shape, dtype) for name, shape, dtype in (
        (layout.CODES, (n, code_dim), np.float32), (layout.PIXELS, (n, 32, 32, 3), np.uint8),
        (layout.LABELS, (n,), np.int64), (layout.FILE_STATS, (n, 2), np.int64))}
    if previous:
        old_codes = np.load(previous.directory / layout.CODES, mmap_mode="r")
        old_pixels = np.load(previous.directory / layout.PIXELS, mmap_mode="r")
        for s in range(0, kept, ROWS_PER_WRITE):
            ids = previous.kept_old[s:s + ROWS_PER_WRITE]
            writers[layout.CODES].write(old_codes[ids])
            writers[layout.PIXELS].write(old_pixels[ids])
            let_go(old_codes, old_pixels)
        del old_codes, old_pixels
    for b in range(n_batches):
        batch = read_batch(work, b)
        writers[layout.CODES].write(batch["codes"])
        writers[layout.PIXELS].write(batch["pixels"])
    for s in range(0, n, ROWS_PER_WRITE):
        writers[layout.LABELS].write(source.labels[rows[s:s + ROWS_PER_WRITE]])
        writers[layout.FILE_STATS].write(source.stats[rows[s:s + ROWS_PER_WRITE]])
    for w in writers.values():
        w.close()
    (tmp_dir / layout.PATHS).write_text(json.dumps([source.paths[i] for i in rows]))
    return n, skipped


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
              if p.is_dir() and not p.is_symlink() and not p.name.endswith((".partial", ".work"))
              and p.resolve() not in keep_set]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    now, removed = time.time(), []
    from .spaces import milvus  # pymilvus itself is imported only when a build names Milvus collections
    for old in others[max(keep - len(keep_set), 0):]:
        if now - old.stat().st_mtime >= grace:
            # A build's Milvus collections go with it; if the server cannot drop them now, the build stays
            # (still listed here) so that the next prune tries again, instead of leaking them for good.
            why = milvus.drop_collections(old)
            if why:
                print(f"Kept {old.name}: {why}", file=sys.stderr)
                continue
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    uris = {uri for p in builds.iterdir() if p.is_dir() for uri in milvus.collections_of(p)}
    milvus.drop_orphans(builds, uris)  # collections of builds that failed after writing them
    return removed


def resolve(index_dir: str | os.PathLike = DEFAULT_INDEX) -> Path:
    """The build directory an index path points at right now (follow the symlink once)."""
    return Path(os.path.realpath(index_dir))


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


def rebuild_source(index_dir: str | os.PathLike, default_data: str,
                   shipped: str | os.PathLike = DEFAULT_CHECKPOINT) -> str | None:
    """What `run.sh` should build the index at `index_dir` from before serving, or None to serve it as
    it is: `default_data` when there is no readable index, the index's own collection when it was
    built by an earlier version of the shipped model (a `git pull` brought a better one). An index
    built by any other model was built so on purpose and is served as it is."""
    from .model import fingerprint

    try:
        meta = read_meta(index_dir)
    except IndexLoadError:
        return default_data
    source = meta["model"].get("source")
    try:
        built_by_shipped = bool(source) and os.path.samefile(source, shipped)
    except OSError:  # the model it was built from is gone, or was never on this machine
        built_by_shipped = False
    if built_by_shipped and meta["model"]["fingerprint"] != fingerprint(shipped):
        return meta["collection"]
    return None


# ---- the schema of meta.json ---------------------------------------------------------------

def _int(x, least: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def _file_name(x) -> bool:
    """A plain name inside the build directory: meta.json must not point the loader at other files."""
    return isinstance(x, str) and bool(re.fullmatch(r"[\w.-]+", x)) and x not in (".", "..")


# Settings the built-in spaces read when they load, with the test each value must pass.
SPACE_SETTINGS = {"code": {"n_trees": _int, "search_k": lambda x: _int(x, 1), "ann_bytes": _int}}
# The code space on its lists (spaces/ivf.py) reads these instead.
IVF_SETTINGS = {"lists": lambda x: _int(x, 1), "probes": lambda x: _int(x, 1), "ann_dims": lambda x: _int(x, 1),
                "scan_dims": lambda x: _int(x, 1), "rescored": lambda x: _int(x, 1)}
# A space in Milvus (spaces/milvus.py) reads these instead: Annoy's settings do not apply to it.
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
    structure = settings.get("structure")
    if structure not in (None, "ivf"):
        return f"names the structure {str(structure)[:40]!r}, which this version does not know"
    required = (MILVUS_SETTINGS if backend == "milvus" else IVF_SETTINGS if structure == "ivf"
                else SPACE_SETTINGS.get(name, {}))
    for key, ok in required.items():
        if key not in settings:
            return f"has no {key} setting"
        if not ok(settings[key]):
            return f"has an unusable {key} setting ({str(settings[key])[:40]!r})"
    return None
