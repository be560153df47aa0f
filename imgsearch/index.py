"""Build an index directory from a collection, in stages, and publish it (publish.py).

1. Encode: the collection's files are read, decoded and encoded in resumable batches (ingest.py),
   only the new and changed ones for `--update` (update.py).
2. Item files: codes, pixels, labels, paths and file stats, row-aligned (`assemble`; layout.py).
3. Spaces and maps: every requested space builds its own files (spaces/), one-core spaces in a
   thread beside the rest, and the 2-D maps (projection.py).
4. meta.json: what built the index, each space's section, and every file's checksum (integrity.py).
5. Publish: the finished build directory replaces the live one with one atomic rename.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import layout
from .data import Collection, CollectionError, skipped_summary
from .images import PREPROCESSING
from .ingest import (BATCH, batch_file, batch_rows, encoding_workers, ingest, local_batches, read_batch, reads_files,
                     source_of)
from .integrity import CHECKSUM, IndexLoadError, file_checksum, read_meta
from .model import DEFAULT_CHECKPOINT, load_checkpoint
from .projection import LANDMARKS, collection_maps, extend_maps
from .publish import DEFAULT_INDEX, _publish, build_lock, builds_dir, remove_leftovers
from .spaces import SPACES, BuildInput, SpaceError
from .spaces.annoy_index import N_TREES
from .spaces.backends import CODE_INDEX
from .spaces.faiss_index import PROBES
from .spaces.vectors import SEED
from .tables import NpyWriter, let_go
from .update import Previous

MAP_METHOD = f"t-SNE of {LANDMARKS} landmarks, other points placed among their nearest landmarks (cosine)"


class BuildError(RuntimeError):
    """A space could not be built as asked (say, more bits than the code has): the build stops, the live
    index is untouched, and the message says which space and why."""


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


@dataclass
class Encoded:
    """Stage one's hand-over: what was read and encoded, and where its batches are."""
    source: object  # ingest.Source: the whole collection
    todo: object  # the part of it encoded now (all of it, or the new and changed files of an update)
    previous: Previous | None  # the live index an update carries items over from
    work: Path  # the resumable work folder holding the batches
    ingested: dict  # ingest()'s summary
    info: dict  # the checkpoint's description (fingerprint, model_args, trained_on)


@stops_on_full_disk
def build_index(data: str | Collection = "cifar10", model_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                out: str | os.PathLike = DEFAULT_INDEX, *, spaces: list[str] | None = None,
                options: dict | None = None, code_index: str = CODE_INDEX, probes: int = PROBES,
                n_trees: int = N_TREES, search_k: int | None = None, bits: int | None = None, seed: int = SEED,
                maps: bool = True, progress: bool = True, on_step=None, wait: bool = True, update: bool = False,
                batch_size: int = BATCH, batches=None) -> dict:
    """Encode a collection, build every space's search structure and publish the index at `out`.

    `spaces` (default: every registered one) and `options` (space name -> keyword options) choose
    what is built; `code_index` (the code space's structure, one of `local_code_indexes()`), `probes`
    (faiss's), `n_trees` and `search_k` (Annoy's; None: by collection size) and `bits` are spelled out.
    Items are read and encoded in batches (ingest.py): memory does not grow with the collection,
    and a build killed at any point resumes from its last finished batch when run again.
    `update=True` keeps the items of the index at `out` whose files are unchanged (same path,
    size and modification time), encodes only new and changed files, drops items whose files
    are gone, and lets each space carry the previous build over (`spaces.Reuse`: fitted PCA and
    rotation, kept rows, faiss's lists, Annoy's trees) instead of building from scratch.
    `on_step(name, fraction)` lets a caller (the app) show progress without tqdm.
    `wait=False` raises BuildBusyError at once when another build into `out` is running.
    `batches` replaces the local decode-and-encode pipeline (`ingest.local_batches`), e.g. by Ray's.
    A space that cannot be built raises BuildError: an index never silently lacks a space it was asked for.
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
    options = {"code": {"structure": code_index, "probes": probes, "n_trees": n_trees, "search_k": search_k},
               **({"bits": {"bits": bits}} if bits else {}), **(options or {})}
    with build_lock(out, wait=wait, on_wait=waiting):
        remove_leftovers(out)
        encoded = encode(data, model_path, out, update=update, batch_size=batch_size, batches=batches,
                         progress=progress, step=step)
        # The random part keeps two builds started in the same second (or a retry after a crash) apart.
        build_dir = builds_dir(out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp_dir = build_dir.with_name(build_dir.name + ".partial")
        tmp_dir.mkdir()
        try:
            meta = write_build(tmp_dir, encoded, model_path, names, options, seed=seed, maps=maps, step=step)
            skipped = meta.pop("_skipped")
            meta["build_seconds"] = round(time.time() - started, 2)
            (tmp_dir / layout.META).write_text(json.dumps(meta, indent=1))
            tmp_dir.rename(build_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        _publish(build_dir, out)
        shutil.rmtree(encoded.work, ignore_errors=True)  # published: nothing left to resume
    step("done", 1.0)
    return {"index": str(out), "build_dir": str(build_dir), "items": meta["items"], "skipped": skipped,
            "spaces": list(meta["spaces"]), "seconds": round(time.time() - started, 2), "update": meta["update"]}


def encode(data, model_path, out: Path, *, update: bool, batch_size: int, batches, progress: bool,
           step) -> Encoded:
    """Stage one: list the collection and decode and encode what the index does not hold yet, in batches."""
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
    return Encoded(source, todo, previous, work, ingested, info)


def write_build(tmp_dir: Path, encoded: Encoded, model_path, names: list[str], options: dict, *, seed: int,
                maps: bool, step) -> dict:
    """Stages two to four into `tmp_dir`: the item files, the spaces and maps, and meta.json's contents
    (without build_seconds; with `_skipped`, the unreadable files, for the caller)."""
    step("writing the item files", 0.55)
    info, source, previous = encoded.info, encoded.source, encoded.previous
    items, skipped = assemble(tmp_dir, encoded.work, encoded.todo, previous, source,
                              encoded.ingested["batch_size"], int(info["model_args"]["code_dim"]))
    skipped = source.skipped + skipped  # what the listing could not read, then what could not be decoded
    if items == 0:
        raise CollectionError(f"{source.spec} holds no readable images ({len(skipped)} files skipped).")
    shutil.copyfile(model_path, tmp_dir / layout.MODEL)
    # Memory-mapped: the spaces read the stores in passes, so a million items never sit in memory twice.
    codes = np.load(tmp_dir / layout.CODES, mmap_mode="r")
    pixels = np.load(tmp_dir / layout.PIXELS, mmap_mode="r")
    reuse = previous.reuse() if previous else None
    shared = BuildInput(pixels, codes, seed=seed, options=options, previous=reuse, scratch=encoded.work)
    built, space_seconds, map_section = build_spaces(tmp_dir, shared, names, options, previous, maps=maps,
                                                     step=step)
    let_go(codes, pixels)
    del codes, pixels, shared
    step("writing", 0.9)
    return {
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
        "display": {"thumbnails": layout.PIXELS, "originals": f"{layout.PATHS} (null: no file of its own)"},
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "build_seconds": None,
        "ingest": encoded.ingested,
        "update": previous.summary(items) if previous else None,
        "space_seconds": space_seconds,
        "maps": map_section,
        "checksums": {p.name: (previous and previous.checksum_of(p))
                      or {"bytes": p.stat().st_size, CHECKSUM: file_checksum(p)}
                      for p in sorted(tmp_dir.iterdir()) if p.name != layout.META},
        "_skipped": skipped,
    }


def build_spaces(tmp_dir: Path, shared: BuildInput, names: list[str], options: dict, previous: Previous | None,
                 *, maps: bool, step) -> tuple[dict, dict, dict | None]:
    """Stage three: each space's meta.json section, each space's seconds, and the maps' section (None
    without maps). A space that runs on one core is built in a thread beside the others and the maps
    (each is computed as it would be in turn: the same files)."""
    def build_space(name: str) -> tuple[dict, float]:
        t = time.time()
        try:
            section = SPACES[name].build(shared, tmp_dir, **options.get(name, {}))
        except SpaceError as e:
            raise BuildError(f"The {name} space cannot be built: {e}.") from None
        return section, round(time.time() - t, 2)

    with ThreadPoolExecutor(1, thread_name_prefix="space") as beside:
        done = {}
        for n, name in enumerate(names):
            step(f"building the {name} space", 0.6 + 0.2 * n / len(names))
            if SPACES[name].builds_beside:
                done[name] = beside.submit(build_space, name)
            else:
                done[name] = build_space(name)
                let_go(shared.codes, shared.pixels)  # a safety net: whatever a space read outside row_blocks and gather
        map_section = None
        if maps:
            step("mapping the collection in 2-D", 0.8)
            map_section = write_maps(tmp_dir, shared, previous)
        done = {name: job if isinstance(job, tuple) else job.result() for name, job in done.items()}
    return ({name: section for name, (section, _) in done.items()},
            {name: seconds for name, (_, seconds) in done.items()}, map_section)


def write_maps(tmp_dir: Path, shared: BuildInput, previous: Previous | None) -> dict:
    """The 2-D maps of code and pixel space; on an update the kept items stay where they were and the new
    ones are placed among them."""
    t = time.time()
    codes, pixels, reuse = shared.codes, shared.pixels, shared.previous
    old_maps = reuse and reuse.maps(len(codes))
    if old_maps:
        made = extend_maps(old_maps, previous.kept_old, codes, pixels, seed=shared.seed)
    else:
        made = collection_maps(codes, pixels, seed=shared.seed, projected=shared.pixel_projection_if_made())
    for space, xy in made.items():
        np.save(tmp_dir / layout.map_file(space), xy)
    return {"method": MAP_METHOD, "seconds": round(time.time() - t, 2),
            **({"kept_from": previous.directory.name} if old_maps else {})}


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
