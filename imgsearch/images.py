"""Turn any image a person might have into the model's input: 32x32 RGB, uint8.

One function, `to_pixels`, is used for the database and for queries alike, so the
pixel-space comparison is fair: a query goes through exactly what the collection did.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = 32  # CIFAR-10's resolution; the model and the pixel index both work at this size
BACKGROUND = (255, 255, 255)  # transparent areas are composited on white, as a browser shows them
MAX_PIXELS = 64_000_000  # ~8000x8000: larger is refused, decoding it could exhaust memory (a "bomb")
MAX_WEBP_PIXELS = 4096 * 4096  # Pillow decodes WebP through three full-size RGBA copies: 16 bytes a pixel
MAX_BYTES = 50 * 1024 * 1024  # uploads larger than this are refused before decoding
# Phone panoramas reach about 10:1 and web banners 11:1 (970x90). Past 20:1 the central square,
# all that a 32x32 result shows, is under 5% of the picture: a strip or a line, not a photo.
# It also keeps the resize before the crop small (at most 640x32).
MAX_ASPECT = 20
# Shrink by whole factors (JPEG's draft, Pillow's reduce) while at least 3x the resized size is
# left, exactly as resize(reducing_gap=3) does; bicubic does the rest. So the work after decoding
# is bounded by the output, and ordinary images give the same pixels as a plain resize.
REDUCING_GAP = 3
BAND_PIXELS = 1 << 20  # modes are converted a band at a time: a full-size copy of 64 MP is GBs
# The formats the README promises. Pillow would otherwise guess among ~40 by content, and the
# rarely used decoders fail in their own ways. Phone MPO files open through the JPEG plugin.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_EXIF_ORIENTATION = 0x0112
_T = Image.Transpose
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
            6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # as ImageOps.exif_transpose
# The same turns as flags: mirror x, mirror y, then swap the axes.
_TURN = {2: (True, False, False), 3: (True, True, False), 4: (False, True, False), 5: (False, False, True),
         6: (False, True, True), 7: (True, True, True), 8: (True, False, True)}

PREPROCESSING = {  # stored in checkpoints and indexes so a mismatch can be detected
    "size": SIZE,
    "resize": "shorter side to 32 (bicubic, antialiased), centre crop",
    "background": list(BACKGROUND),
    "exif_transpose": True,
    "scale": "uint8 / 255",
}


class ImageError(ValueError):
    """An input that is not a usable image. The message is one sentence for a person."""


class _Decoded(NamedTuple):
    image: Image.Image  # 8-bit "L" or "RGB", as stored (not yet turned upright), shrunk
    size: tuple[int, int]  # the original's width and height, as stored
    shrink: tuple[float, float]  # original pixels per pixel of `image`, along x and y
    orientation: int  # EXIF orientation, 1 when upright


def load_image(source) -> Image.Image:
    """Open a path, bytes, a file-like object or a PIL image as an upright 8-bit RGB PIL image.

    A large image comes back shrunk by whole factors, to about 3x what a 32x32 result needs.
    """
    d = _decode(source)
    return _upright(d.image.convert("RGB"), d.orientation)


def to_pixels(source) -> np.ndarray:
    """Any image source -> (32, 32, 3) uint8: shorter side resized to 32, then centre-cropped."""
    d = _decode(source)
    if d.size == (SIZE, SIZE) and d.image.mode == "RGB" and d.orientation not in _UPRIGHT:
        # Already the model's input (CIFAR-10, a million-image collection): the steps below would
        # only copy it (about a third of the time such a file took, docs/speed.md).
        return np.array(d.image, dtype=np.uint8)
    img = _upright(d.image.convert("RGB"), d.orientation)
    nw, nh = _resized_size(_upright_box((0, 0, *d.size), d.size, d.orientation)[2:])
    # The original's extent in img: a last, partial block of the shrinking counts for its share only.
    extent = (0, 0, d.size[0] / d.shrink[0], d.size[1] / d.shrink[1])
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, box=_upright_box(extent, d.image.size, d.orientation))
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    return np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8).copy()


def _resized_size(size: tuple[int, int]) -> tuple[int, int]:
    """Shorter side to SIZE. Symmetric in x and y, so it holds for a stored or an upright size."""
    scale = SIZE / min(size)
    return max(SIZE, round(size[0] * scale)), max(SIZE, round(size[1] * scale))


def _decode(source) -> _Decoded:
    """Refuse what is unusable from the header, then decode no more than a 32x32 result needs."""
    given = isinstance(source, Image.Image)
    if given:
        img, name = source, "The image"
    else:
        data, name = _read(source)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if not given:
                img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_shape(img, name)
            size = img.size
            target = _resized_size(size)
            extent = size  # the original's size in decoded pixels
            if not given:
                img.seek(0)  # animated GIF/WebP/APNG: the first frame
                # JPEG can decode at 1/2, 1/4 or 1/8 scale: cheaper than any reduction afterwards
                drafted = img.draft(img.mode, (REDUCING_GAP * target[0], REDUCING_GAP * target[1]))
                extent = drafted[1][2:] if drafted else size
                img.load()
            factor = tuple(max(1, int(e / t / REDUCING_GAP)) for e, t in zip(extent, target))
            shrink = (size[0] / extent[0] * factor[0], size[1] / extent[1] * factor[1])
            return _Decoded(_shrink(img, factor), size, shrink, img.getexif().get(_EXIF_ORIENTATION, 1))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} is too large to decode safely (a possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image format this tool can read.") from None
    except Exception as e:  # decoders fail in many ways (OSError, SyntaxError, struct.error, ...)
        raise ImageError(f"{name} could not be decoded ({_short(e)}).") from None


def _read(source) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} is not a file.")
        try:
            if path.stat().st_size > MAX_BYTES:
                raise ImageError(f"{path.name} is larger than {MAX_BYTES // 2**20} MB.")
            data, name = path.read_bytes(), path.name
        except OSError as e:  # no permission, gone since the check, a disk error: this file, not the whole build
            raise ImageError(f"{path.name} could not be read ({e.strerror or type(e).__name__}).") from None
    elif isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "The image"
    elif hasattr(source, "read"):
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
        name = getattr(source, "name", "The upload")
    else:
        raise ImageError(f"A {type(source).__name__} is not an image, a file or a path.")
    if len(data) == 0:
        raise ImageError(f"{name} is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name} is larger than {MAX_BYTES // 2**20} MB.")
    return data, name


def _check_shape(img: Image.Image, name: str) -> None:
    """Refuse from the header alone, before any pixel is decoded."""
    w, h = img.size
    if w * h > (MAX_WEBP_PIXELS if img.format == "WEBP" else MAX_PIXELS):
        raise ImageError(f"{name} is {w}x{h} pixels, too large to decode safely.")
    if not 0 < max(w, h) <= MAX_ASPECT * min(w, h):
        raise ImageError(f"{name} is {w}x{h} pixels, a strip too thin to search with "
                         f"(at most {MAX_ASPECT}:1).")


def _short(e: Exception) -> str:
    return str(e).split("\n")[0].rstrip(".") or type(e).__name__


def _shrink(img: Image.Image, factor: tuple[int, int]) -> Image.Image:
    """Any mode -> 8-bit "L" or "RGB", reduced by whole factors a band of rows at a time,
    so that no full-size copy is ever made."""
    if factor == (1, 1) and img.mode in ("L", "RGB"):
        img.load()  # as the bands would: loading a TIFF turns it upright and drops its orientation tag
        return img  # nothing to convert or reduce: the bands would be copies
    full_scale = _full_scale(img)
    (w, h), (fx, fy) = img.size, factor
    rows = max(1, BAND_PIXELS // (w * fy)) * fy  # whole blocks: the bands reduce as the image would
    out = None
    for top in range(0, h, rows):
        band = _to_8bit(img.crop((0, top, w, min(h, top + rows))), full_scale).reduce(factor)
        if out is None:
            out = Image.new(band.mode, (-(-w // fx), -(-h // fy)))
        out.paste(band, (0, top // fy))
    return out


def _full_scale(img: Image.Image) -> float:
    """The value that maps to 255 for 16-bit, 32-bit and float greyscale (the full range)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode not in ("I", "F"):
        return 255.0
    top = img.getextrema()[1]
    if img.mode == "F" and top <= 1.0:
        return 1.0
    return 65535.0 if top > 255 else 255.0


def _to_8bit(img: Image.Image, full_scale: float) -> Image.Image:
    """Any mode -> "L" or "RGB", transparency composited on white."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # float32 is exact here for 16-bit input: no a*255/65535 lies within 0.001 of a tie
        a = np.asarray(img, dtype=np.float32) * np.float32(255.0 / full_scale) + np.float32(0.5)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    if mode in ("1", "L"):
        return img.convert("L")  # RGB only once small: a third of the work
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, BACKGROUND)
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def _upright_box(box: tuple[float, ...], size: tuple[int, int], orientation: int) -> tuple[float, ...]:
    """A box in an image as stored (of this size) -> the same pixels once the image is upright."""
    flip_x, flip_y, swap = _TURN.get(orientation, (False, False, False))
    x0, y0, x1, y1 = box
    if flip_x:
        x0, x1 = size[0] - x1, size[0] - x0
    if flip_y:
        y0, y1 = size[1] - y1, size[1] - y0
    return (y0, x0, y1, x1) if swap else (x0, y0, x1, y1)


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    method = _UPRIGHT.get(orientation)
    return img.transpose(method) if method is not None else img


def upscale(pixels: np.ndarray, size: int = 256, frame: tuple | None = None) -> Image.Image:
    """Show a 32x32 image large with nearest-neighbour, so its pixels stay crisp.

    `frame` draws a coloured border (e.g. green for "same class as the query").
    """
    img = Image.fromarray(np.asarray(pixels)).resize((size, size), Image.Resampling.NEAREST)
    if frame is not None:
        border = max(3, size // 24)
        framed = Image.new("RGB", (size + 2 * border, size + 2 * border), frame)
        framed.paste(img, (border, border))
        img = framed
    return img
