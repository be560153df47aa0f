"""No upload can exhaust the server or crash it, tiny collections get maps, and the
server's defaults keep it private."""
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imgsearch.images import FORMATS, ImageError, to_pixels
from imgsearch.projection import collection_maps

from conftest import ROOT


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# Run in a child whose address space may grow by 300 MB only: a conversion that needs more fails
# there at once with MemoryError, instead of taking gigabytes from the machine running the tests.
MEMORY_PROBE = textwrap.dedent("""
    import io, json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from PIL import Image
    from imgsearch.images import ImageError, to_pixels

    def encoded(img, fmt="PNG"):
        buf = io.BytesIO()
        img.save(buf, fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
        return buf.getvalue()

    uploads = {
        "1000000x1": encoded(Image.new("RGB", (1_000_000, 1), (0, 200, 0))),  # 13 KB
        "10000000x1": encoded(Image.new("RGB", (10_000_000, 1), (0, 200, 0))),  # 130 KB
        "16-bit 8000x8000": encoded(Image.new("I;16", (8000, 8000), 32896)),
        "transparent 8000x8000": encoded(Image.new("RGBA", (8000, 8000), (255, 0, 0, 0))),
        "20:1 at 64 MP": encoded(Image.new("RGB", (35_760, 1_788), (0, 0, 200))),
        "WebP 4096x4096": encoded(Image.new("RGB", (4096, 4096), (200, 0, 0)), "WEBP"),
        "WebP 4100x4100": encoded(Image.new("RGB", (4100, 4100), (200, 0, 0)), "WEBP"),
    }
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))
    for name, data in uploads.items():
        try:
            result = to_pixels(data).reshape(-1, 3).mean(0).round().tolist()
        except ImageError as e:
            result = str(e)
        except MemoryError:
            result = "MemoryError"
        print(json.dumps([name, result]), flush=True)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="measures the address space through /proc")
def test_any_accepted_shape_converts_within_300_mb():
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(ROOT)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = dict(json.loads(line) for line in r.stdout.splitlines())
    for thin in ("1000000x1", "10000000x1"):  # decoded whole, a 3 KB upload would need 5.7 GB
        assert "too thin" in got[thin] and got[thin].endswith("."), got[thin]
    assert got["16-bit 8000x8000"] == [128, 128, 128]  # full range scaled, without a float64 copy
    assert got["transparent 8000x8000"] == [255, 255, 255]
    assert got["20:1 at 64 MP"] == [0, 0, 200]
    assert got["WebP 4096x4096"] == [200, 0, 0]
    assert "too large to decode safely" in got["WebP 4100x4100"]  # Pillow needs 16 bytes a pixel


def other_formats() -> dict[str, bytes]:
    """Files that Pillow reads, in formats the README does not promise (those this Pillow writes)."""
    Image.init()
    img = Image.new("RGB", (40, 30), (200, 30, 30))
    return {fmt: encoded(img.convert("P") if fmt == "BLP" else img, fmt)
            for fmt in ("AVIF", "BLP", "PPM", "TGA", "ICO", "PCX", "SGI", "QOI", "DDS") if fmt in Image.SAVE}


@pytest.mark.parametrize("fmt", list(other_formats()))
def test_formats_not_promised_are_not_opened(fmt):
    with pytest.raises(ImageError, match="not an image format this tool can read"):
        to_pixels(other_formats()[fmt])


def mutations(data: bytes, n: int, seed: int):
    """Flipped bytes, cuts and splices: what a damaged or hostile file looks like."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        b = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:
            for _ in range(rng.integers(1, 8)):
                b[rng.integers(len(b))] = rng.integers(256)
        elif kind == 1:
            del b[rng.integers(8, len(b)):]
        else:
            at = rng.integers(len(b))
            b[at:at] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
        yield bytes(b)


def test_mutated_avif_and_blp_give_one_sentence():
    files = {fmt: data for fmt, data in other_formats().items() if fmt in ("AVIF", "BLP")}
    if not files:
        pytest.skip("this Pillow writes neither AVIF nor BLP")
    for data in files.values():
        for bad in mutations(data, 100, seed=len(data)):
            with pytest.raises(ImageError):  # AVIF's decoder raised RuntimeError here
                to_pixels(bad)


@pytest.mark.filterwarnings("ignore:Truncated File Read")
def test_fuzzed_images_give_pixels_or_image_error():
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    for seed, fmt in enumerate(FORMATS):
        for bad in mutations(encoded(img, fmt), 150, seed=seed):
            try:
                px = to_pixels(bad)
            except ImageError as e:
                assert "\n" not in str(e) and str(e).endswith(".")
            else:
                assert px.shape == (32, 32, 3) and px.dtype == np.uint8


@pytest.mark.parametrize("error", [RuntimeError("decoder gave up"), KeyError("tile"), ZeroDivisionError()])
def test_any_decoder_failure_is_an_image_error(monkeypatch, error):
    def fail(self):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail)
    with pytest.raises(ImageError, match="could not be decoded"):
        to_pixels(encoded(Image.new("RGB", (40, 30)), "PNG"))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_collection_of_a_few_images_gets_maps(n):
    rng = np.random.default_rng(n)
    maps = collection_maps(rng.normal(size=(n, 16)).astype(np.float32),
                           rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    for layout in maps.values():  # t-SNE refused these with a ValueError about its perplexity
        assert layout.shape == (n, 2) and layout.dtype == np.float32 and np.isfinite(layout).all()
        if n > 1:
            assert len(np.unique(layout, axis=0)) == n  # distinct images, distinct places


def test_a_collection_of_identical_images_gets_maps():
    # t-SNE crashed the process here (its PCA start divides by zero spread), so run it apart
    probe = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        from imgsearch.projection import collection_maps
        maps = collection_maps(np.ones((40, 16), np.float32), np.full((40, 32, 32, 3), 9, np.uint8))
        assert all(m.shape == (40, 2) and np.isfinite(m).all() for m in maps.values())
    """)
    r = subprocess.run([sys.executable, "-c", probe, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_server_defaults_keep_the_page_private():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from streamlit import config

    conf = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"  # no "Network URL": serving others is a choice
    assert conf["client"]["showErrorDetails"] == "none"  # tracebacks name server paths
    assert conf["client"]["toolbarMode"] == "minimal"
    known = config.get_config_options()
    for section, options in conf.items():  # a misspelt option would be ignored without a word
        assert all(f"{section}.{name}" in known for name in options), (section, options)
