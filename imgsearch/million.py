"""A million-image collection to measure builds on: augmented views of the offline CIFAR-10 copy.

Each of the source's images gives `views` different 32x32 JPEG files (a random crop of 70-100%
of the image, a mirror half the time, a little brightness and contrast jitter), written as
DIR/<class>/<part>/<image>-<view>.jpg with 1,000 files per folder, so that listing stays fast.
About 1 GB of JPEG data (~4 GB on disk with 4 KB blocks). Used by `imgsearch benchmark --million`,
never by the test suite. DIR/.complete marks a finished collection (the dot keeps it out of builds).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

from .data import OFFLINE_HINT

ITEMS = 1_000_000
PER_FOLDER = 1000  # files per leaf folder
JPEG_QUALITY = 90  # the offline copy's own files are JPEGs of about this quality
MARKER = ".complete"


_SOURCES: list[str] = []  # each worker's copy of the source file list, set once by _init


def _init(sources: list[str]) -> None:
    global _SOURCES
    _SOURCES = sources


def _write_items(job: tuple[str, list[int]]) -> int:
    """Write the given items (views of source images) into one leaf folder."""
    folder, items = job
    os.makedirs(folder, exist_ok=True)
    n_src = len(_SOURCES)
    for item in items:
        src, view = item % n_src, item // n_src
        rng = np.random.default_rng([item, 12345])  # item i is the same file on every run and machine
        with Image.open(_SOURCES[src]) as im:
            img = im.convert("RGB")
        w, h = img.size
        scale = rng.uniform(0.7, 1.0)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((32, 32), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
        img.save(os.path.join(folder, f"{src:05d}-{view:03d}.jpg"), quality=JPEG_QUALITY)
    return len(items)


def source_images(source: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The source's images, the classes taking turns (so any prefix covers every class), and each one's class."""
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.relative_to(root).parts[0], []).append(f)
    turns = sorted(((i, c, f) for c, fs in by_class.items() for i, f in enumerate(fs)), key=lambda t: (t[0], t[1]))
    return [str(f) for _, _, f in turns], [c for _, c, _ in turns]


def write_million(out: str | os.PathLike, items: int = ITEMS, source: str | os.PathLike = OFFLINE_HINT,
                  workers: int | None = None, progress: bool = True) -> Path:
    """Write the collection into `out` unless a finished one is there; returns `out`.

    Item i is view i // n of source image i % n, so the first n items are one view of every
    source image and any prefix of the collection covers all classes evenly.
    """
    out = Path(out)
    if (out / MARKER).is_file() and (out / MARKER).read_text().strip() == str(items):
        return out
    files, classes = source_images(source)
    if not files:
        raise FileNotFoundError(f"{source} holds no images to make the collection from")
    # Every leaf folder holds items of one class only: group the items by their source's class.
    by_class: dict[str, list[int]] = {}
    for item in range(items):
        by_class.setdefault(classes[item % len(files)], []).append(item)
    jobs = [(str(out / cls / f"{p // PER_FOLDER:04d}"), its[p:p + PER_FOLDER])
            for cls, its in by_class.items() for p in range(0, len(its), PER_FOLDER)]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(files,)) as pool, \
            tqdm(total=items, desc="writing the collection", unit="img", disable=not progress, mininterval=1.0) as bar:
        for n in pool.map(_write_items, jobs, chunksize=4):
            bar.update(n)
    (out / MARKER).write_text(str(items))
    return out

