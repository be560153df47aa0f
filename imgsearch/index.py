"""Build an index directory from a collection, publish it atomically, load it back.

An index directory holds row-aligned files (row i of every file = item i = Annoy id i):

    meta.json    what built it: code dimension, metric, Annoy settings, the model's fingerprint,
                 the collection, item count, class names, preprocessing, file sizes
    model.pt     a copy of the checkpoint that made the codes, so the index is self-contained
    codes.npy    (N, code_dim) float32 codes
    codes.ann    Annoy index over codes.npy (ids 0..N-1)
    pixels.npy   (N, 32, 32, 3) uint8: exact pixel-space search, and each item's thumbnail
    labels.npy   (N,) int64 class index into meta["classes"], -1 where unknown
    paths.json   N entries: the item's own file, or null (CIFAR-10 items live in an archive)
    map_code.npy, map_pixel.npy   (N, 2) float32: 2-D maps of code and pixel space (optional)

`--out data/index` is a symlink to `data/index.builds/<timestamp>/`. A rebuild writes a new
build directory and only then swaps the symlink with one atomic rename, so a reader never
sees a half-written index and a running app keeps its already-open files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from .data import DATA_DIR, Collection, load_collection
from .images import PREPROCESSING
from .model import encode_pixels, load_checkpoint
from .projection import LANDMARKS, collection_maps

FORMAT = "imgsearch-index-v1"
DEFAULT_INDEX = DATA_DIR / "index"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"
METRIC = "angular"  # cosine: the codes are trained with a cosine (InfoNCE) objective
N_TREES = 20  # from the sweep in docs/speed.md: more trees barely help at a given search_k,
SEARCH_K = 10_000  # which sets the latency; 10,000 keeps recall@10 above 0.98 with a margin, under 1 ms
MAP_METHOD = f"t-SNE of {LANDMARKS} landmarks, other points placed among their nearest landmarks (cosine)"
SEED = 0  # Annoy's tree-splitting seed: the same inputs give a byte-identical index


class IndexLoadError(RuntimeError):
    """An index that cannot be used as asked; the message says why and what to do."""


def build_annoy(codes: np.ndarray, n_trees: int, *, seed: int = SEED, path: Path | None = None,
                n_jobs: int = 1) -> AnnoyIndex:
    """A seeded Annoy index over the codes, item i = row i.

    One thread keeps the tree order, and so the file, deterministic; `path` builds on disk,
    for indexes too large to hold twice in memory.
    """
    ann = AnnoyIndex(codes.shape[1], METRIC)
    ann.set_seed(seed)
    if path is not None:
        ann.on_disk_build(str(path))
    for i, v in enumerate(codes):
        ann.add_item(i, v)
    ann.build(n_trees, n_jobs=n_jobs)
    return ann


def build_index(data: str | Collection = "cifar10", model_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                out: str | os.PathLike = DEFAULT_INDEX, *, n_trees: int = N_TREES, search_k: int = SEARCH_K,
                seed: int = SEED, maps: bool = True, progress: bool = True, on_step=None) -> dict:
    """Encode a collection, build the Annoy index and publish it at `out`. Returns a summary.

    `on_step(name, fraction)` lets a caller (the app) show progress without tqdm.
    """
    step = on_step or (lambda name, frac: None)
    started = time.time()
    step("reading the collection", 0.0)
    collection = data if isinstance(data, Collection) else load_collection(data, progress=progress)
    model, info = load_checkpoint(model_path)
    step("encoding", 0.3)
    codes = encode_pixels(model, collection.pixels, progress=progress)
    step("building the code index", 0.6)

    out = Path(out)
    builds = out.parent / (out.name + ".builds")
    builds.mkdir(parents=True, exist_ok=True)
    build_dir = builds / time.strftime("%Y%m%d-%H%M%S")
    while build_dir.exists():
        build_dir = Path(str(build_dir) + "x")
    tmp_dir = build_dir.with_name(build_dir.name + ".partial")
    tmp_dir.mkdir()
    try:
        ann = build_annoy(codes, n_trees, seed=seed)
        ann.save(str(tmp_dir / "codes.ann"))
        ann.unload()
        map_seconds = None
        if maps:
            step("mapping the collection in 2-D", 0.75)
            t = time.time()
            for space, xy in collection_maps(codes, collection.pixels, seed=seed).items():
                np.save(tmp_dir / f"map_{space}.npy", xy)
            map_seconds = round(time.time() - t, 2)
        step("writing", 0.9)
        np.save(tmp_dir / "codes.npy", codes)
        np.save(tmp_dir / "pixels.npy", collection.pixels)
        np.save(tmp_dir / "labels.npy", collection.labels)
        (tmp_dir / "paths.json").write_text(json.dumps(collection.paths))
        shutil.copyfile(model_path, tmp_dir / "model.pt")
        meta = {
            "format": FORMAT,
            "items": len(codes),
            "code_dim": int(codes.shape[1]),
            "metric": METRIC,
            "n_trees": n_trees,
            "search_k": search_k,
            "seed": seed,
            "model": {"fingerprint": info["fingerprint"], "source": str(model_path),
                      "model_args": info["model_args"], "trained_on": info["trained_on"]},
            "collection": collection.spec,
            "classes": collection.classes,
            "skipped": len(collection.skipped),
            "preprocessing": PREPROCESSING,
            "pixel_metric": "euclidean on 32x32x3 pixels scaled to [0, 1]",
            "display": {"thumbnails": "pixels.npy", "originals": "paths.json (null: no file of its own)"},
            "ann_bytes": (tmp_dir / "codes.ann").stat().st_size,
            "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "build_seconds": None,
            "maps": {"method": MAP_METHOD, "seconds": map_seconds} if maps else None,
        }
        meta["build_seconds"] = round(time.time() - started, 2)
        (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=1))
        tmp_dir.rename(build_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    publish(build_dir, out)
    step("done", 1.0)
    return {"index": str(out), "build_dir": str(build_dir), "items": len(codes), "skipped": collection.skipped,
            "seconds": round(time.time() - started, 2)}


def publish(build_dir: Path, out: Path, keep: int = 2) -> None:
    """Point `out` at `build_dir` with one atomic rename, then prune old builds."""
    out = Path(out)
    if out.exists() and not out.is_symlink():
        # An index directory from elsewhere: move it among the builds so `out` can become a link.
        out.rename(build_dir.parent / f"{time.strftime('%Y%m%d-%H%M%S')}-moved")
    link_tmp = out.with_name(f".{out.name}.link-{os.getpid()}")
    if link_tmp.is_symlink():
        link_tmp.unlink()
    link_tmp.symlink_to(os.path.relpath(build_dir.resolve(), out.parent.resolve()))
    os.replace(link_tmp, out)
    # Older builds may still be open in a running app; Linux keeps their files alive until closed.
    done = sorted(p for p in build_dir.parent.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
    for old in done[:-keep]:
        if old.resolve() != build_dir.resolve():
            shutil.rmtree(old, ignore_errors=True)


def resolve(index_dir: str | os.PathLike = DEFAULT_INDEX) -> Path:
    """The build directory an index path points at right now (follow the symlink once)."""
    return Path(os.path.realpath(index_dir))


def read_meta(index_dir: str | os.PathLike) -> dict:
    path = Path(index_dir) / "meta.json"
    if not path.is_file():
        raise IndexLoadError(f"No index at {index_dir}; build one with scripts/build_index.py.")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise IndexLoadError(f"{path} is corrupt; rebuild the index with scripts/build_index.py.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexLoadError(f"{index_dir} is not an {FORMAT} index; rebuild it with scripts/build_index.py.")
    return meta
