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


def plain_resize(img: Image.Image) -> np.ndarray:
    """What to_pixels computes, done the direct way: the whole image resized, then cropped."""
    w, h = img.size
    nw, nh = max(32, round(w * 32 / min(w, h))), max(32, round(h * 32 / min(w, h)))
    img = img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - 32) // 2, (nh - 32) // 2
    return np.asarray(img.crop((left, top, left + 32, top + 32)))


def smooth(w, h, mode="RGB", seed=0):
    """A photo-like image: random colours, smoothly interpolated."""
    base = np.random.default_rng(seed).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).convert(mode)


@pytest.mark.parametrize("size, mode", [((1199, 1801), "RGB"), ((653, 491), "L"), ((7000, 500), "RGB")])
def test_large_images_give_the_same_pixels_as_a_plain_resize(size, mode):
    img = smooth(*size, mode)
    assert (to_pixels(encoded(img, "PNG")) == plain_resize(img)).all()


def test_large_jpeg_is_decoded_small_and_still_matches():
    img = smooth(2400, 1800)
    px = to_pixels(encoded(img, "JPEG", quality=95)).astype(int)
    assert np.abs(px - plain_resize(img)).mean() < 2  # decoded at 1/8 scale (draft)


UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270}  # how a camera stores an upright picture for each EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_large_image(orientation):
    upright = Image.new("RGB", (653, 491), (255, 255, 255))  # not a whole number of reduced blocks
    upright.paste((255, 0, 0), (0, 0, 327, 246))
    upright.paste((0, 0, 255), (327, 246, 653, 491))
    stored = upright.transpose(UNDO[orientation]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    px = to_pixels(encoded(stored, "PNG", exif=exif.tobytes())).astype(int)
    # within rounding: shrinking as stored puts a partial block on the other edge (a mix-up gives 30+)
    assert np.abs(px - plain_resize(upright)).max() <= 4
    assert (px[2, 2] == [255, 0, 0]).all() and (px[-3, -3] == [0, 0, 255]).all()


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_32x32_image_comes_back_pixel_for_pixel_and_turned_upright(fmt, orientation):
    # Already the model's input size: no resize may touch it, only the EXIF turn, from a file and as given.
    upright = np.random.default_rng(orientation).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    stored = Image.fromarray(upright).transpose(UNDO[orientation]) if orientation > 1 else Image.fromarray(upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(stored, fmt, exif=exif.tobytes())
    assert (to_pixels(data) == upright).all()
    assert (to_pixels(Image.open(io.BytesIO(data))) == upright).all()
    grey = upright[..., 0]
    assert (to_pixels(encoded(Image.fromarray(grey), fmt)) == grey[..., None]).all()


def test_converting_in_bands_changes_nothing(monkeypatch):
    grey16 = Image.fromarray((np.add.outer(np.arange(500), np.arange(700)) * 50).astype(np.uint16))
    rgba = smooth(700, 500, "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((700, 500)))
    whole = [to_pixels(encoded(img, "PNG")) for img in (grey16, rgba)]
    monkeypatch.setattr(images, "BAND_PIXELS", 3000)
    assert all((to_pixels(encoded(img, "PNG")) == w).all() for img, w in zip((grey16, rgba), whole))


def test_32_bit_and_float_greyscale_scale_the_full_range():
    assert (to_pixels(Image.fromarray(np.full((40, 40), 0.5, np.float32))) == 128).all()  # float in [0, 1]
    assert (to_pixels(Image.fromarray(np.full((40, 40), 200, np.int32))) == 200).all()  # 8-bit values
    deep = np.full((40, 40), 65535, np.int32)
    deep[:, :20] = 32896
    px = to_pixels(Image.fromarray(deep))
    assert (px[:, 20:] == 255).all() and (px[:, :12] == 128).all()


def test_phone_mpo_opens_as_its_first_picture():
    first, second = solid((255, 0, 0), (64, 48)), solid((0, 0, 255), (64, 48))
    data = encoded(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    px = to_pixels(data)
    assert px[..., 0].mean() > 240 and px[..., 2].mean() < 15


def test_absurd_aspect_ratios_are_refused_before_decoding():
    assert to_pixels(encoded(solid((0, 200, 0), (400, 20)), "PNG")).shape == (32, 32, 3)  # 20:1 is fine
    for size in [(420, 20), (20, 420), (1000, 1)]:
        with pytest.raises(ImageError, match="too thin") as e:
            load_image(encoded(solid((0, 200, 0), size), "PNG"))
        assert "\n" not in str(e.value) and str(e.value).endswith(".")
