"""Build an index directory from a collection, publish it atomically, load it back.

The directory's files are listed in layout.py; every registered space (spaces/) adds its own.
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

from . import layout
from .data import DATA_DIR, Collection, load_collection
from .images import PREPROCESSING
from .model import encode_pixels, load_checkpoint
from .projection import LANDMARKS, collection_maps
from .spaces import SPACES, BuildInput, SpaceError
from .spaces.code import METRIC, N_TREES, SEARCH_K, SEED, build_annoy  # noqa: F401 (the evaluation and benchmark use them)

DEFAULT_INDEX = DATA_DIR / "index"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"
MAP_METHOD = f"t-SNE of {LANDMARKS} landmarks, other points placed among their nearest landmarks (cosine)"


class IndexLoadError(RuntimeError):
    """An index that cannot be used as asked; the message says why and what to do."""


def build_index(data: str | Collection = "cifar10", model_path: str | os.PathLike = DEFAULT_CHECKPOINT,
                out: str | os.PathLike = DEFAULT_INDEX, *, spaces: list[str] | None = None,
                options: dict | None = None, n_trees: int = N_TREES, search_k: int = SEARCH_K,
                bits: int | None = None, seed: int = SEED, maps: bool = True, progress: bool = True,
                on_step=None) -> dict:
    """Encode a collection, build every space's search structure and publish the index at `out`.

    `spaces` (default: every registered one) and `options` (space name -> keyword options) choose
    what is built; `n_trees`, `search_k` and `bits` are the common options spelled out.
    `on_step(name, fraction)` lets a caller (the app) show progress without tqdm.
    """
    step = on_step or (lambda name, frac: None)
    started = time.time()
    step("reading the collection", 0.0)
    collection = data if isinstance(data, Collection) else load_collection(data, progress=progress)
    model, info = load_checkpoint(model_path)
    step("encoding", 0.3)
    codes = encode_pixels(model, collection.pixels, progress=progress)
    options = {"code": {"n_trees": n_trees, "search_k": search_k}, **({"bits": {"bits": bits}} if bits else {}),
               **(options or {})}
    names = list(spaces or SPACES)
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        raise ValueError(f"Unknown space {unknown[0]!r}; the spaces are {', '.join(SPACES)}.")

    out = Path(out)
    builds = out.parent / (out.name + ".builds")
    builds.mkdir(parents=True, exist_ok=True)
    build_dir = builds / time.strftime("%Y%m%d-%H%M%S")
    while build_dir.exists():
        build_dir = Path(str(build_dir) + "x")
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
        }
        meta["build_seconds"] = round(time.time() - started, 2)
        (tmp_dir / layout.META).write_text(json.dumps(meta, indent=1))
        tmp_dir.rename(build_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    publish(build_dir, out)
    step("done", 1.0)
    return {"index": str(out), "build_dir": str(build_dir), "items": len(codes), "skipped": collection.skipped,
            "spaces": list(built), "spaces_skipped": skipped_spaces, "seconds": round(time.time() - started, 2)}


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
    path = Path(index_dir) / layout.META
    if not path.is_file():
        raise IndexLoadError(f"No index at {index_dir}; build one with `imgsearch build-index` (scripts/build_index.py).")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise IndexLoadError(f"{path} is corrupt; rebuild the index with `imgsearch build-index`.") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in layout.OLD_FORMATS:
        raise IndexLoadError(f"{index_dir} was built by an older imgsearch ({fmt}, without the pca and bits spaces); "
                             "rebuild it with `imgsearch build-index` (the same --data and --out).")
    if fmt != layout.FORMAT:
        raise IndexLoadError(f"{index_dir} is not an {layout.FORMAT} index; rebuild it with `imgsearch build-index`.")
    return meta
