"""Turn any image a person might have into the model's input: 32x32 RGB, uint8.

One function, `to_pixels`, is used for the database and for queries alike, so the
pixel-space comparison is fair: a query goes through exactly what the collection did.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32  # CIFAR-10's resolution; the model and the pixel index both work at this size
BACKGROUND = (255, 255, 255)  # transparent areas are composited on white, as a browser shows them
MAX_PIXELS = 64_000_000  # ~8000x8000: larger is refused, decoding it could exhaust memory (a "bomb")
MAX_BYTES = 50 * 1024 * 1024  # uploads larger than this are refused before decoding

PREPROCESSING = {  # stored in checkpoints and indexes so a mismatch can be detected
    "size": SIZE,
    "resize": "shorter side to 32 (bicubic, antialiased), centre crop",
    "background": list(BACKGROUND),
    "exif_transpose": True,
    "scale": "uint8 / 255",
}


class ImageError(ValueError):
    """An input that is not a usable image. The message is one sentence for a person."""


def load_image(source) -> Image.Image:
    """Open a path, bytes, a file-like object or a PIL image as an 8-bit RGB PIL image."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} is not a file.")
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"{path.name} is larger than {MAX_BYTES // 2**20} MB.")
        with open(path, "rb") as f:
            data = f.read()
        name = path.name
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
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{name} is {img.width}x{img.height} pixels, too large to decode safely."
                )
            img.seek(0)  # animated GIF/WebP/APNG: the first frame
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} is too large to decode safely (a possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image format this tool can read.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name} could not be decoded ({_short(e)}).") from None
    return _to_rgb(img)


def _short(e: Exception) -> str:
    return str(e).split("\n")[0].rstrip(".") or type(e).__name__


def _to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and bring every mode to 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit or float greyscale: scale the full range down to 8 bits instead of clipping
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "F" and a.max() <= 1.0:
            hi = 1.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, BACKGROUND)
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def to_pixels(source) -> np.ndarray:
    """Any image source -> (32, 32, 3) uint8: shorter side resized to 32, then centre-cropped."""
    img = load_image(source)
    w, h = img.size
    if (w, h) != (SIZE, SIZE):
        scale = SIZE / min(w, h)
        nw, nh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
        img = img.crop((left, top, left + SIZE, top + SIZE))
    return np.asarray(img, dtype=np.uint8).copy()


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
