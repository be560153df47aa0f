"""Pictures of a collection's items as a person sees them: the file itself, upright and a few hundred
pixels across, or, for items without a file (CIFAR-10 through torchvision), the 32x32 pixels
enlarged without smoothing.

Decoded on demand, with a cache, not stored by the build. Both were measured on 60 generated
12-megapixel camera JPEGs on one core of this (shared, busy) machine (`scripts/measure_previews.py`,
docs/previews.json): a thumbnail store would add 10.1 ms per photo to the build's 43.4 ms decode
(23.0 -> 18.7 images/s per core) and 5.8 KB per item, and then serve a picture in 0.003 ms; on
demand, a picture costs 60 ms the first time it is shown (a result grid's 20 decode on every core
at once, `explore.warm_previews`) and 0.007 ms from the cache. On demand keeps the build's speed
and its files as they are, and decodes only the pictures someone looks at; its price is a slower
first view of each result.

A picture is only ever read from a file inside the collection's folder (after resolving symlinks),
and only while the file is the one the build read (same size and modification time): anything
else is shown as the item's indexed pixels.
"""
from __future__ import annotations

import datetime
import io
import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps

from .images import FORMATS, MAX_BYTES, ImageError, _check_shape

PREVIEW_SIDE = 256  # long side of a preview: sharp in a result grid's cell on a high-density screen
SCREEN_SIDE = 1280  # long side of an opened result: a screen's worth (JPEG draft still decodes at 1/2 or 1/4)
PIXELS_SIDE = 160  # a 32x32 item enlarged 5x, crisp
JPEG_QUALITY = 85
CACHE_ITEMS = 2048  # encoded previews kept (~12 KB each: ~25 MB)


def enlarged(pixels: np.ndarray | Image.Image, side: int = PIXELS_SIDE) -> Image.Image:
    """A small picture ((32, 32, 3) pixels, or a PIL image) enlarged by whole pixels to a long side of at least
    `side`, every pixel a crisp block."""
    img = Image.fromarray(np.ascontiguousarray(pixels)) if isinstance(pixels, np.ndarray) else pixels
    factor = -(-side // max(img.size))
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def is_small(jpeg: bytes) -> bool:
    """Whether a preview is smaller than PIXELS_SIDE (a CIFAR-sized file): shown as pixels, not as a photo."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return max(img.size) < PIXELS_SIDE


def inside(path: str, root: str | None) -> bool:
    """Whether `path`, symlinks resolved, lies inside the folder `root` (itself resolved)."""
    if not root:
        return False
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real.startswith(base.rstrip(os.sep) + os.sep)


def file_preview(path: str, side: int = PREVIEW_SIDE) -> Image.Image:
    """The picture in `path`, upright (EXIF orientation), long side at most `side`, RGB; ImageError when unusable.

    JPEG decodes in draft mode at the smallest scale (1/2 ... 1/8) that still gives `side` pixels."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise ImageError(f"{os.path.basename(path)} is larger than {MAX_BYTES // 2**20} MB.")
        with Image.open(path, formats=FORMATS) as img:
            _check_shape(img, os.path.basename(path))
            img.draft("RGB", (side, side))
            img = ImageOps.exif_transpose(img)  # a copy: it outlives the open file
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            return img.convert("RGB")
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - a file gone, unreadable or damaged since the build
        raise ImageError(f"{os.path.basename(path)} could not be shown ({type(e).__name__}).") from None


@lru_cache(maxsize=CACHE_ITEMS)
def preview_jpeg(path: str, size: int, mtime_ns: int, side: int = PREVIEW_SIDE) -> bytes:
    """`file_preview` as JPEG bytes; the file's size and time are part of the key, so a changed file is read again."""
    buf = io.BytesIO()
    file_preview(path, side).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def item_preview_jpeg(path: str | None, root: str | None, stats: tuple[int, int] | None,
                      side: int = PREVIEW_SIDE) -> bytes | None:
    """An item's preview as JPEG bytes, or None when it must be shown by its pixels: no file, a file outside
    the collection's folder, or one that is gone, unreadable or no longer the one the build read (`stats`:
    its recorded size and modification time, None when the index records none)."""
    if path is None or not inside(path, root):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stats is not None and tuple(stats) != (st.st_size, st.st_mtime_ns):
        return None
    try:
        return preview_jpeg(path, st.st_size, st.st_mtime_ns, side)
    except ImageError:
        return None


def details(path: str | None, root: str | None) -> dict:
    """What the larger view tells about an item's file: bytes, pixel dimensions (upright) and modification
    time (ISO, local), each None when unknown; nothing is read from a file outside the collection."""
    out = {"bytes": None, "width": None, "height": None, "modified": None}
    if path is None or not inside(path, root):
        return out
    try:
        st = os.stat(path)
        out["bytes"] = st.st_size
        out["modified"] = datetime.datetime.fromtimestamp(st.st_mtime).isoformat(" ", "seconds")
        with Image.open(path, formats=FORMATS) as img:
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            out["width"], out["height"] = (img.height, img.width) if turned else img.size
    except Exception:  # noqa: BLE001 - a file gone or unreadable: what was learnt stays, the rest is None
        pass
    return out
