"""Every kind of image a person might upload becomes 32x32 RGB uint8, or one clear ImageError."""
import io

import numpy as np
import pytest
from PIL import Image

from imgsearch import images
from imgsearch.images import ImageError, load_image, to_pixels


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(colour, size=(32, 32), mode="RGB"):
    return Image.new(mode, size, colour)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_decodes_to_32x32_rgb(fmt):
    kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    px = to_pixels(encoded(solid((200, 40, 40), (50, 40)), fmt, **kw))
    assert px.shape == (32, 32, 3) and px.dtype == np.uint8
    assert abs(int(px[..., 0].mean()) - 200) <= 6 and px[..., 1].mean() < 60


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half fully transparent
    px = to_pixels(encoded(img, "PNG"))
    assert (px[:, :16] == 255).all()
    assert (px[:, 16:] == [255, 0, 0]).all()


def test_la_and_palette_with_transparency():
    la = Image.new("LA", (32, 32), (0, 0))  # black but transparent: shows white
    assert (to_pixels(encoded(la, "PNG")) == 255).all()
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 0
    assert (to_pixels(encoded(pal, "PNG")) == [0, 0, 255]).all()


def test_greyscale_and_cmyk():
    assert (to_pixels(encoded(solid(77, mode="L"), "PNG")) == 77).all()
    cmyk = to_pixels(encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=100))
    assert cmyk[..., 0].mean() > 240 and cmyk[..., 1:].mean() < 20  # pure red


def test_16_bit_greyscale_scales_the_full_range():
    a = np.full((32, 32), 65535, dtype=np.uint16)
    a[:, :16] = 32896  # half of full scale -> 128
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    px = to_pixels(encoded(img, "PNG"))
    assert (px[:, 16:] == 255).all() and (px[:, :16] == 128).all()


def test_animated_gif_uses_the_first_frame():
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    px = to_pixels(buf.getvalue())
    assert px[..., 0].mean() > 240 and px[..., 2].mean() < 15


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 32, 32))  # stored: blue left, red right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed blue on top, red below
    px = to_pixels(encoded(img, "JPEG", exif=exif.tobytes(), quality=100))
    top, bottom = px[:8].mean(axis=(0, 1)), px[-8:].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 50
    assert bottom[0] > 200 and bottom[2] < 50


def test_any_size_is_resized_and_centre_cropped():
    img = Image.new("RGB", (300, 100), (0, 255, 0))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left third red: cropped away
    img.paste((0, 0, 255), (200, 0, 300, 100))  # right third blue: cropped away
    px = to_pixels(encoded(img, "PNG"))
    assert px.shape == (32, 32, 3)
    assert (px[:, 2:-2] == [0, 255, 0]).all()
    tiny = to_pixels(encoded(solid((9, 9, 9), (3, 5)), "PNG"))
    assert tiny.shape == (32, 32, 3)


def test_pil_images_and_paths_give_the_same_pixels(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    assert (to_pixels(img) == to_pixels(tmp_path / "a.png")).all()
    assert (to_pixels(str(tmp_path / "a.png")) == to_pixels((tmp_path / "a.png").read_bytes())).all()


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"hello, this is text", "not an image"),
    (encoded(solid((1, 2, 3), (64, 64)), "PNG")[:60], "could not be decoded"),
])
def test_bad_inputs_give_one_sentence(data, words):
    with pytest.raises(ImageError, match=words) as e:
        load_image(data)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_truncated_jpeg_is_refused():
    data = encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(encoded(solid(0, (200, 200), "L"), "PNG"))


def test_pillow_bomb_error_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    with pytest.raises(ImageError, match="decompression bomb|too large"):
        load_image(encoded(solid(0, (80, 80), "L"), "PNG"))


def test_missing_and_oversized_files(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="is not a file"):
        load_image(tmp_path / "nope.png")
    monkeypatch.setattr(images, "MAX_BYTES", 10)
    (tmp_path / "big.png").write_bytes(encoded(solid(0), "PNG"))
    with pytest.raises(ImageError, match="larger than"):
        load_image(tmp_path / "big.png")
