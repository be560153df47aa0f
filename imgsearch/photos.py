"""Folders of generated camera photos, and what showing them costs: the measurement behind previews.py's
choice between a thumbnail store written by the build and decoding a result's file on demand.

A generated photo is smooth colour fields with grain, saved as a camera would save it (JPEG, quality 90,
a few turned by their EXIF orientation), in nested subfolders: `<year>/<place>/IMG_NNNN.jpg`.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .images import to_pixels
from .previews import PREVIEW_SIDE, JPEG_QUALITY, preview_jpeg

CAMERA_SIZE = (4000, 3000)  # 12 megapixels
FOLDERS = ("2023/beach", "2023/city", "2024/garden", "2024/mountains/day-1", "2024/mountains/day-2")
TURNED = 6  # the EXIF orientation of a phone held upright: stored sideways, shown turned 90 degrees


def camera_photo(seed: int, size: tuple[int, int] = CAMERA_SIZE) -> Image.Image:
    """A photo-sized picture: a few random colour fields enlarged smoothly, with fine grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    grain = Image.effect_noise(size, 12).convert("RGB")
    return Image.blend(img, grain, 0.08)


def write_camera_folder(root: str | os.PathLike, n: int, size: tuple[int, int] = CAMERA_SIZE, seed: int = 0,
                        workers: int = 1) -> list[Path]:
    """n generated photos under `root`, spread over FOLDERS; every third one stored sideways with EXIF
    orientation 6. Returns their paths. `workers` processes write them (a 12-megapixel photo takes ~0.3 s)."""
    jobs = [(Path(root), i, size, seed) for i in range(n)]
    if workers <= 1:
        return [_write_photo(*job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_write_photo, *zip(*jobs), chunksize=8))


def _write_photo(root: Path, i: int, size: tuple[int, int], seed: int) -> Path:
    path = root / FOLDERS[i % len(FOLDERS)] / f"IMG_{i:04d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    img = camera_photo(seed + i, size)
    exif = Image.Exif()
    if i % 3 == 2:
        img = img.transpose(Image.Transpose.ROTATE_90)  # stored sideways, as the sensor saw it
        exif[0x0112] = TURNED
    img.save(path, "JPEG", quality=90, exif=exif)
    return path


def photo_index(folder: str | os.PathLike, n: int, model=None) -> tuple[Path, dict]:
    """An index of n generated 12-megapixel photos in `folder` (written unless it holds them already), built
    beside it at `<folder>.index`; returns its path and the build's figures."""
    from .index import build_index
    from .model import DEFAULT_CHECKPOINT

    folder = Path(folder)
    if len(list(folder.rglob("*.jpg"))) < n:
        write_camera_folder(folder, n, workers=os.cpu_count() or 1)
    out = folder.with_name(folder.name + ".index")
    summary = build_index(str(folder), model or DEFAULT_CHECKPOINT, out, progress=False)
    seconds = read_seconds(out)
    return out, {"photos": summary["items"], "photo_size": list(CAMERA_SIZE), "build_s": summary["seconds"],
                 "ingest_s": seconds, "images_per_s": round(summary["items"] / seconds, 1) if seconds else None}


def read_seconds(out: Path) -> float | None:
    """The decode-and-encode stage's seconds, as the build recorded them."""
    from .integrity import read_meta
    from .publish import resolve

    return read_meta(resolve(out))["ingest"].get("seconds")


def _ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 3)


def store_thumbnail(path: Path) -> tuple[float, bytes]:
    """What a thumbnail store would add to the build for one file: (seconds beyond the decode the build
    already does, the stored JPEG). The decode itself (draft mode at >= PREVIEW_SIDE) is not counted."""
    with Image.open(path) as img:
        img.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))
        img.load()
        t = time.perf_counter()
        small = ImageOps.exif_transpose(img)
        small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        return time.perf_counter() - t, buf.getvalue()


def measure_previews(folder: str | os.PathLike, repeats: int = 3) -> dict:
    """Both ways of showing a collection's photos, measured on the JPEGs under `folder` (one core)."""
    paths = sorted(Path(folder).rglob("*.jpg"))
    decode, extra, stored, cold, warm, read = [], [], [], [], [], []
    for p in paths:
        t = time.perf_counter()
        to_pixels(p)
        decode.append(time.perf_counter() - t)
        seconds, jpeg = store_thumbnail(p)
        extra.append(seconds)
        stored.append(jpeg)
    blob = Path(folder) / ".thumbnails.bin"  # the store: one file of JPEGs, read at their offsets
    blob.write_bytes(b"".join(stored))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in stored])])
    with open(blob, "rb") as f:
        for _ in range(repeats):
            for i in range(len(paths)):
                t = time.perf_counter()
                os.pread(f.fileno(), int(offsets[i + 1] - offsets[i]), int(offsets[i]))
                read.append(time.perf_counter() - t)
    blob.unlink()
    for _ in range(repeats):
        preview_jpeg.cache_clear()
        for p in paths:
            st = p.stat()
            t = time.perf_counter()
            preview_jpeg(str(p), st.st_size, st.st_mtime_ns)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            preview_jpeg(str(p), st.st_size, st.st_mtime_ns)
            warm.append(time.perf_counter() - t)
    build = statistics.median(decode)
    with Image.open(paths[0]) as first:
        size = first.size
    return {
        "photos": len(paths), "photo_size": list(size), "photo_bytes_mean": round(np.mean([p.stat().st_size for p in paths])),
        "preview_side": PREVIEW_SIDE, "machine": platform.processor() or platform.machine(), "cores_used": 1,
        "build_decode_ms_p50": _ms(decode),
        "build_images_per_s_per_core": {"without_store": round(1 / build, 1),
                                        "with_store": round(1 / (build + statistics.median(extra)), 1)},
        "store": {"extra_build_ms_p50": _ms(extra), "bytes_per_item_mean": round(float(np.mean([len(s) for s in stored]))),
                  "read_ms_p50": _ms(read)},
        "on_demand": {"decode_ms_p50": _ms(cold), "cached_ms_p50": _ms(warm),
                      "page_of_20_cold_ms": round(20 * 1000 * statistics.median(cold), 1)},
    }
