"""A real browser: `streamlit run app.py`, Debian's Chromium driven by Playwright: an upload, the grids at a
desktop's and a phone's width, the Map view's hover picture and click; screenshots in test-output/."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, make_image

sys.path.insert(0, str(ROOT / "scripts"))
from pagekit import BROWSER_ARGS, far_neighbour, serve  # noqa: E402 - the benchmark's own helpers, so both see one page

CHROMIUM = "/usr/bin/chromium"
OUTPUT = ROOT / "test-output"  # screenshots land here (not committed)

if not Path(CHROMIUM).exists():
    if os.environ.get("IMGSEARCH_REQUIRE_BROWSER"):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)


@pytest.fixture
def server(index_dir, tmp_path):
    with serve(index_dir, home=tmp_path, timeout=60) as (url, _):
        yield url


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def all_pictures_loaded(page) -> bool:
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                                   .every(i => i.complete && i.naturalWidth > 0)""")


def first_hit(page, space: int):
    """The bounding box of rank 1 of the space-th grid."""
    return page.locator(".ims-space").nth(space).locator("figure").first.bounding_box()


def test_upload_in_a_real_browser_shows_both_grids(server, browser, tmp_path):
    query = tmp_path / "photo.jpg"
    Image.fromarray(make_image(1, 4242)).resize((300, 200)).save(query, quality=90)
    OUTPUT.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(server)
    page.get_by_text("Upload an image or pick one").wait_for(timeout=60_000)
    started = time.time()
    page.locator("input[type=file]").set_input_files(str(query))
    # The grids' headers (an upload has no class, so they are the spaces' bare titles; the "Spaces to
    # compare" widget shows the same words, so the locator names the grid).
    page.locator(".ims-head", has_text="Pixel space").wait_for(timeout=60_000)
    page.locator(".ims-head", has_text="Code space").wait_for(timeout=60_000)
    page.get_by_text("#10 ·").nth(1).wait_for(timeout=60_000)  # the last result of the second grid
    seconds = time.time() - started
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                              .every(i => i.complete && i.naturalWidth > 0)""", timeout=30_000)
    page.screenshot(path=str(OUTPUT / "browser-upload.png"), full_page=True)
    assert page.get_by_text("Upload: photo.jpg").count() == 1
    assert page.get_by_text("Auto-encoder: rebuilt from its 64-d code").count() == 1
    # the pills come after the grids in the page's script: on a loaded machine they may paint a moment later
    page.locator(".st-key-more_code button").nth(9).wait_for(timeout=30_000)
    assert page.locator(".st-key-more_pixel button").count() == 10 and page.locator(".st-key-more_code button").count() == 10
    assert page.locator(".ims-hit img").count() == 20 and all_pictures_loaded(page)
    wide = [page.locator(".ims-space").nth(0).locator("figure").nth(r).bounding_box() for r in range(5)]
    code = first_hit(page, 1)
    assert all(abs(b["y"] - wide[0]["y"]) < 2 for b in wide)  # wide: five of a space in a row
    assert abs(code["y"] - wide[0]["y"]) < 2 and code["x"] > wide[4]["x"] + wide[4]["width"]  # the spaces side by side
    assert wide[0]["width"] >= 64

    page.set_viewport_size({"width": 390, "height": 900})  # a phone: rank by rank
    page.wait_for_timeout(500)
    pixel, code = first_hit(page, 0), first_hit(page, 1)
    second = page.locator(".ims-space").nth(0).locator("figure").nth(1).bounding_box()
    assert abs(pixel["y"] - code["y"]) < 2 and pixel["x"] + pixel["width"] <= code["x"]  # rank 1 of both, one row
    assert second["y"] >= pixel["y"] + pixel["height"] and abs(second["x"] - pixel["x"]) < 2  # rank 2 below it
    assert pixel["width"] >= 64 and code["x"] + code["width"] <= 390
    page.screenshot(path=str(OUTPUT / "browser-upload-390.png"), full_page=True)
    (OUTPUT / "browser-upload.txt").write_text(f"upload to both grids: {seconds:.2f} s\n")


def test_map_hover_shows_a_picture_and_a_click_makes_a_neighbour_the_query(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(server)
    page.get_by_text("Upload an image or pick one").wait_for(timeout=60_000)
    page.locator(".st-key-random button").click()
    page.get_by_text("#10 ·").nth(1).wait_for(timeout=60_000)
    query = page.evaluate("() => document.body.innerText.match(/Item (\\d+)/)[1]")
    page.get_by_test_id("stSidebar").get_by_text("Map", exact=True).click()
    page.get_by_text(f"Query: item {query} ").wait_for(timeout=60_000)
    page.wait_for_function("""() => { const c = document.querySelectorAll(
                                        '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg.marks');
                                      return c.length === 2 && c[0].getBoundingClientRect().width > 0; }""", timeout=60_000)
    page.wait_for_timeout(500)
    point = far_neighbour(page, roles=("neighbour", "sample"))  # on 60 items the neighbours may all sit under the cross
    assert point is not None and str(point["id"]) != query
    page.mouse.move(point["x"], point["y"])
    tooltip = page.locator("#vg-tooltip-element.visible")
    tooltip.locator("img").wait_for(timeout=10_000)  # the hover shows the picture
    shown = tooltip.inner_text().split()
    hovered = shown[shown.index("id") + 1]  # the dot on top under the pointer: the one a click picks
    assert shown[shown.index("role") + 1] in ("neighbour", "sample") and hovered != query
    page.mouse.click(point["x"], point["y"])
    page.get_by_text(f"Query: item {hovered} ").wait_for(timeout=60_000)  # the clicked dot is the query now
    page.get_by_test_id("stSidebar").get_by_text("Search", exact=True).click()
    page.get_by_text(re.compile(rf"^Item {hovered}(: .*)?$")).wait_for(timeout=60_000)  # "Item 12: red/012.png"


UPLOADS = ROOT.parent / "shared" / "datasets" / "cifar10-jpg" / "test"


@pytest.mark.skipif(not UPLOADS.is_dir(), reason="the benchmark uploads photos of the offline CIFAR-10 test split")
def test_the_page_benchmark_writes_every_figure(index_dir, tmp_path):
    """scripts/benchmark_page.py end to end on the 60-item index, two actions of each kind: the keys, not the times."""
    out = tmp_path / "page.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_page.py", "--index", str(index_dir), "--actions", "2",
                        "--visits", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import json

    result = json.loads(out.read_text())
    for key in ("cold_visit_s", "first_visit_s", "upload_p50_s", "random_p50_s", "more_like_this_p50_s", "map_ready_s",
                "map_click_s", "map_bytes", "quality_ready_s", "upload_p95_s", "random_p95_s", "more_like_this_p95_s"):
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["result_pictures_min"] >= 20 and "| Map view ready |" in r.stdout


def test_between_shows_the_decoded_strip_with_the_nearest_items_beneath(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(server)
    page.get_by_text("Upload an image or pick one").wait_for(timeout=60_000)
    page.locator(".st-key-random button").click()
    page.locator(".st-key-between_code button").nth(2).wait_for(timeout=60_000)
    page.locator(".st-key-between_code button").nth(2).click()
    page.get_by_text("Between the query and code space result #3").wait_for(timeout=60_000)
    strip = page.locator(".ims-groups").last
    strip.get_by_text("step 8", exact=True).wait_for(timeout=30_000)
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                              .every(i => i.complete && i.naturalWidth > 0)""", timeout=30_000)
    steps = [strip.locator(".ims-group").nth(i).locator("figure") for i in range(8)]
    assert strip.locator(".ims-group").count() == 8 and all(s.count() == 2 for s in steps)
    first, beneath = steps[0].nth(0).bounding_box(), steps[0].nth(1).bounding_box()
    assert beneath["y"] >= first["y"] + first["height"] and abs(beneath["x"] - first["x"]) < 2  # the nearest item below
    second = steps[1].nth(0).bounding_box()
    assert abs(second["y"] - first["y"]) < 2 and second["x"] > first["x"] + first["width"]  # the steps side by side
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-between.png"), full_page=True)
