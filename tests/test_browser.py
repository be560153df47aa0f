"""A real browser: `streamlit run app.py`, Debian's Chromium driven by Playwright, an upload, a screenshot."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, make_image

CHROMIUM = "/usr/bin/chromium"
OUTPUT = ROOT / "test-output"  # screenshots land here (not committed)

if not Path(CHROMIUM).exists():
    if os.environ.get("IMGSEARCH_REQUIRE_BROWSER"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(index_dir):
    port = free_port()
    env = {**os.environ, "IMGSEARCH_INDEX": str(index_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + proc.stdout.read().decode()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_upload_in_a_real_browser_shows_both_grids(server, tmp_path):
    from playwright.sync_api import sync_playwright

    query = tmp_path / "photo.jpg"
    Image.fromarray(make_image(1, 4242)).resize((300, 200)).save(query, quality=90)
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server)
        page.get_by_text("Upload an image or pick one").wait_for(timeout=60_000)
        started = time.time()
        page.locator("input[type=file]").set_input_files(str(query))
        page.get_by_role("heading", name="Pixel space", exact=True).wait_for(timeout=60_000)
        page.get_by_role("heading", name="Code space", exact=True).wait_for(timeout=60_000)
        page.get_by_text("#10 ·").nth(1).wait_for(timeout=60_000)  # the last result of the second grid
        seconds = time.time() - started
        page.wait_for_timeout(500)  # let the images paint
        page.screenshot(path=str(OUTPUT / "browser-upload.png"), full_page=True)
        assert page.get_by_text("Upload: photo.jpg").count() == 1
        assert page.get_by_text("Auto-encoder: rebuilt from its 64-d code").count() == 1
        assert page.get_by_role("button", name="more like this").count() == 20
        browser.close()
    (OUTPUT / "browser-upload.txt").write_text(f"upload to both grids: {seconds:.2f} s\n")
