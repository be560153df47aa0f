"""Stage one of a build: a collection's files -> pixels and codes, in batches written as they finish.

A million decoded images do not belong in memory, and a build killed after an hour must not
start over. So a build reads, decodes and encodes in fixed batches: batch b is items
b*batch_size ... (b+1)*batch_size - 1 of the collection's sorted file list, and each finished
batch is one file in the build's work folder, written under a temporary name and then renamed.
Run again with the same arguments, a build finds its work folder by a key (the file list with
sizes and modification times, the model, the batch size) and skips the finished batches. Every
batch is encoded exactly as a clean build would encode it, so a resumed build's codes are the
clean build's, bit for bit.

A folder's files are decoded (Pillow) and encoded (torch) by one worker process per core, each
with one torch thread, while this process writes the finished batches. One decoding process beside
an encoder with a torch thread per core would make three busy threads on two cores, and torch's
threads wait for each other at every layer, so whenever the decoder had a core one of them would
wait for nothing. With a process per core, both cores do useful work all the time.

`Source` is what a build reads: the files of a folder (with their sizes and modification times,
which let `--update` tell new and changed files from the rest), or pixels already in memory
(CIFAR-10 from torchvision, a `Collection` handed over by a caller).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import Collection, list_folder
from .images import ImageError, to_pixels
from .model import encode_pixels

BATCH = 4096  # items per batch: the unit a killed build resumes from (~1.5 s of work, 12 MB of pixels)
PREFETCH = 2  # batches in flight beyond one per worker: enough to hide a slow file, little memory
# Forked, where the system can: a spawned worker would re-run the caller's script, breaking every
# script without a __main__ guard. A forked worker uses torch with one thread only: torch's thread
# pool does not survive a fork, but a single thread never starts one.
WORKER_START = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


@dataclass
class Source:
    """The items a build reads, in order; row i of every array is item i (before unreadable files are skipped)."""
    spec: str  # what meta.json calls the collection: "cifar10", or a folder's absolute path
    classes: list[str]
    labels: np.ndarray  # (n,) int64, -1 where unknown
    paths: list  # (n,) the item's file, or None for items without one (CIFAR-10's archive)
    stats: np.ndarray  # (n, 2) int64: file size and modification time (ns); zeros for in-memory items
    pixels: np.ndarray | None = None  # (n, 32, 32, 3) uint8 when the items are already decoded
    skipped: list = field(default_factory=list)  # (file, why) for names the listing could not read

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> "Source":
        return Source(self.spec, self.classes, self.labels[rows], [self.paths[i] for i in rows], self.stats[rows],
                      None if self.pixels is None else self.pixels[rows])

    def key(self, *parts) -> str:
        """A fingerprint of the items (and of `parts`): a work folder belongs to exactly one set of inputs."""
        h = hashlib.sha256(json.dumps([self.spec, self.classes, *parts]).encode())
        h.update(self.labels.tobytes())
        h.update(self.stats.tobytes())
        h.update("\0".join(p or "" for p in self.paths).encode("utf-8", "surrogateescape"))  # names need not be UTF-8
        if self.pixels is not None:
            h.update(np.ascontiguousarray(self.pixels).data)
        return h.hexdigest()


def from_collection(collection: Collection) -> Source:
    n = len(collection)
    return Source(collection.spec, list(collection.classes), np.asarray(collection.labels, dtype=np.int64),
                  list(collection.paths), np.zeros((n, 2), dtype=np.int64), collection.pixels)


def scan_folder(root: str | os.PathLike) -> Source:
    """The files of a folder (`data.list_folder`), to be decoded batch by batch."""
    listing = list_folder(root)
    return Source(listing.root, listing.classes, listing.labels, listing.paths, listing.stats, skipped=listing.skipped)


def reads_files(data: str | Collection) -> bool:
    """Whether a build's --data is a folder of files to decode (not pixels already in memory)."""
    return not isinstance(data, Collection) and not (data.startswith("cifar10") and not Path(data).exists())


def source_of(data: str | Collection) -> Source:
    """A build's --data: "cifar10", "cifar10:test", a folder, or a Collection already in memory."""
    if isinstance(data, Collection):
        return from_collection(data)
    if not reads_files(data):
        from .data import load_collection
        return from_collection(load_collection(data))
    return scan_folder(data)


def decode_files(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(pixels (n, 32, 32, 3) uint8, readable (n,) bool, [(row, why) for each unreadable file])."""
    pixels = np.zeros((len(paths), 32, 32, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    errors = []
    for i, p in enumerate(paths):
        try:
            pixels[i] = to_pixels(p)
            ok[i] = True
        except ImageError as e:
            errors.append((i, str(e)))
    return pixels, ok, errors


def _die_with(parent: int) -> None:
    """A worker must not outlive its build: forked, it shares the build's open files, the build lock
    among them, and an orphan blocked on a full result pipe would hold that lock forever (seen when
    a build was SIGKILLed: the next build waited for a lock no build held)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the build died before the line above took effect
        os._exit(1)


def batch_file(work: Path, b: int) -> Path:
    return work / f"batch-{b:06d}.npz"


def batch_rows(n: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def usable_cores() -> int:
    """The cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_worker_model = None  # the model, in a worker process


def _start_worker(parent: int, model) -> None:
    import torch

    _die_with(parent)
    torch.set_num_threads(1)  # one process per core: a second thread would only compete with the other worker
    global _worker_model
    _worker_model = model


def decode_and_encode(paths: list[str], model=None) -> tuple[np.ndarray, list[tuple[int, str]], np.ndarray, np.ndarray]:
    """(readable (n,) bool, errors, pixels of the readable items, their codes), encoded by `model`
    (None: in a worker, the model it was started with)."""
    pixels, ok, errors = decode_files(paths)
    px = np.ascontiguousarray(pixels[ok])
    return ok, errors, px, encode_pixels(_worker_model if model is None else model, px)


@contextlib.contextmanager
def encoding_workers(model, count: int | None = None):
    """A pool of `count` worker processes (default: one per core) that decode and encode whole batches,
    or None on a single core. The workers are forked at once, so start them before listing a large
    collection: a forked process shares its parent's memory as it is at the fork, and that memory
    counts as each process's own resident memory (a million paths are ~300 MB)."""
    count = count or usable_cores()
    if count <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(count, mp_context=WORKER_START, initializer=_start_worker,
                               initargs=(os.getpid(), model))
    try:
        pool.submit(int).result()  # a forking pool starts all its workers at the first job: now
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def local_batches(source: Source, model, todo: list[int], batch_size: int, pool: ProcessPoolExecutor | None = None):
    """Yield (batch number, readable (n,) bool, errors, pixels of the readable items, their codes) for each
    batch in `todo`, in order: decoded and encoded by `pool`'s workers (`encoding_workers`; started here
    when not given and there is more than one batch)."""
    every = batch_rows(len(source), batch_size)
    rows = [every[b] for b in todo]
    if source.pixels is not None:  # already decoded: torch's own threads use every core
        for b, r in zip(todo, rows):
            px = np.ascontiguousarray(source.pixels[r.start:r.stop])
            yield b, np.ones(len(r), dtype=bool), [], px, encode_pixels(model, px)
    elif pool is None and len(todo) > 1 and usable_cores() > 1:
        with encoding_workers(model) as pool:
            yield from local_batches(source, model, todo, batch_size, pool)
    elif pool is None:  # one batch, or one core: nothing to run beside
        for b, r in zip(todo, rows):
            yield b, *decode_and_encode(source.paths[r.start:r.stop], model)
    else:
        jobs = (pool.submit(decode_and_encode, source.paths[r.start:r.stop]) for r in rows)
        pending = deque(itertools.islice(jobs, usable_cores() + PREFETCH))  # the pool has at most one worker a core
        for b in todo:
            ok, errors, px, codes = pending.popleft().result()
            pending.extend(itertools.islice(jobs, 1))  # keep every worker busy, PREFETCH batches ahead
            yield b, ok, errors, px, codes


def ingest(source: Source, model, work: Path, *, batch_size: int = BATCH, progress: bool = True,
           on_step=None, batches=None) -> dict:
    """Decode and encode every batch of `source` not yet in `work`; return what was done.

    `batches(source, model, todo, batch_size)` replaces the local pipeline (the Ray one yields the same tuples).
    """
    work.mkdir(parents=True, exist_ok=True)
    for leftover in work.glob(".*.tmp"):  # a batch file a killed build was writing
        leftover.unlink(missing_ok=True)
    n_batches = len(batch_rows(len(source), batch_size))
    todo = [b for b in range(n_batches) if not batch_file(work, b).exists()]
    done_before = n_batches - len(todo)
    produce = batches or local_batches
    started = time.perf_counter()
    bar = tqdm(total=len(source), desc="decoding and encoding", unit="img", disable=not progress,
               mininterval=0.5, initial=min(done_before * batch_size, len(source)))
    for i, (b, ok, errors, px, codes) in enumerate(produce(source, model, todo, batch_size)):
        path = batch_file(work, b)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, ok=ok, pixels=px, codes=codes,
                     errors=np.array(json.dumps(errors)))  # a JSON string: no pickled objects in a work file
        os.replace(tmp, path)  # a batch file exists only once it is whole
        bar.update(len(ok))
        if on_step:
            on_step((done_before + i + 1) / n_batches)
    bar.close()
    return {"batches": n_batches, "resumed_batches": done_before, "batch_size": batch_size,
            "items_read": sum(len(batch_rows(len(source), batch_size)[b]) for b in todo),
            "seconds": round(time.perf_counter() - started, 2)}


def read_batch(work: Path, b: int) -> dict:
    with np.load(batch_file(work, b), allow_pickle=False) as f:
        out = {k: f[k] for k in ("ok", "pixels", "codes")}
        out["errors"] = json.loads(str(f["errors"]))
    return out
