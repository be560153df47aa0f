"""How long a person waits for the page: the Streamlit app over an index, driven in headless Chromium.

    .venv/bin/python scripts/benchmark_page.py --index /tmp/page-index --json docs/page.json
    .venv/bin/python scripts/benchmark_page.py --photos 2000 --json docs/page_photos.json   # generated camera photos

Starts the server on a free port of 127.0.0.1, then measures, each time from the action until the page
has answered it (the script ran and is idle again, nothing is stale, every picture has loaded):
the first visit after the start and later visits (until the upload widget shows), uploads, "Random"
picks, "more like this", entering the Map view, a click on a neighbour in the map, entering the Quality
view; and the bytes the websocket carries for a Map render. Prints a Markdown table for docs/page.md.
Needs Playwright and Debian's Chromium (requirements-dev.txt); not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pagekit import ROOT, answer, caption_changed, far_neighbour, launch, query_caption, serve

from imgsearch.report import write_json

UPLOADS = ROOT.parent / "shared" / "datasets" / "cifar10-jpg" / "test"  # queries the index has not seen
UPLOADER = '[data-testid="stFileUploader"]'
FAILURE = "/tmp/benchmark_page-failure.png"

IDLE = "() => document.querySelector('[data-test-script-state]')?.getAttribute('data-test-script-state') === 'notRunning'"
QUERY_ITEM = "() => document.body.innerText.match(/Query: item (\\d+)/)?.[1] || ''"
CHARTS_DRAWN = """(n) => () => {
  const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  return charts.length >= n && charts.every(c => { const d = c.querySelector('canvas, svg.marks');
    return d && d.getBoundingClientRect().width > 0; });
}"""


QUALITY_DRAWN = """() => document.body.innerText.includes('Where two searches disagree')
  && !!document.querySelector('[data-testid="stMain"] canvas, [data-testid="stMain"] svg.marks')"""


def drawn(n: int) -> str:
    return f"({CHARTS_DRAWN})({n})"


def upload_files(folder: Path, n: int) -> list[Path]:
    """n photos of the test split (never in the training-split index), enlarged to 256x256 JPEGs as a camera's would be."""
    classes = sorted(p for p in UPLOADS.iterdir() if p.is_dir())
    out = []
    for i in range(n):
        src = sorted(classes[i % len(classes)].glob("*.jpg"))[i // len(classes)]
        dst = folder / f"photo-{i:02d}.jpg"
        Image.open(src).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC).save(dst, quality=90)
        out.append(dst)
    return out


def stats(xs: list[float]) -> dict:
    return {"p50": float(np.percentile(xs, 50)), "p95": float(np.percentile(xs, 95)), "n": len(xs)}


def pictures(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                                   .filter(i => i.complete && i.naturalWidth > 0).length""")


def click_more(page, rank: int) -> None:
    """"more like this" under the code-space hit of `rank` (0-based), in whichever form the page draws it."""
    old = page.locator(f".st-key-more_code_{rank} button")
    if old.count():
        old.click()
    else:
        page.locator(".st-key-more_code button").nth(rank).click()


def measure(index: str, *, actions: int, visits: int, screenshots: Path | None, app: str = "app.py", k: int = 10,
            out: dict | None = None) -> dict:
    """The figures, written into `out` as they come (a later step that fails leaves the earlier ones)."""
    from playwright.sync_api import sync_playwright

    out = {} if out is None else out
    out.update({"index": str(index), "app": str(app), "actions": actions})
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        files = upload_files(Path(tmp), actions)
        browser = launch(p)  # before the server, so the browser's own start is not counted
        with serve(index, app=app) as (url, start_s):
            out["server_start_s"] = start_s
            page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
            try:
                steps(page, url, browser, out, files, actions=actions, visits=visits, screenshots=screenshots, k=k)
            except Exception:
                page.screenshot(path=FAILURE)  # where it stopped, for the person reading the error
                out["failure_screenshot"] = FAILURE
                raise
        browser.close()
    return out


def steps(page, url, browser, out, files, *, actions, visits, screenshots, k) -> None:
    """Every measurement in turn, on the first visitor's page (other visits in contexts of their own)."""
    received = [0]
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.__setitem__(
        0, received[0] + len(payload))))
    visits_step(page, url, browser, out, visits)
    search_step(page, out, files, actions, k)
    if screenshots:
        shoot(page, screenshots, "search")
    map_step(page, out, received, actions)
    if screenshots:
        shoot(page, screenshots, "map")
    out["quality_ready_s"] = answer(page, lambda: page.get_by_test_id("stSidebar")
                                    .get_by_text("Quality", exact=True).click(), until=QUALITY_DRAWN, timeout=180)
    if screenshots:
        shoot(page, screenshots, "quality")


def visits_step(page, url, browser, out, visits: int) -> None:
    """The cold start, then later visits: a new tab of the same browser (its cache holds the page's scripts,
    as a person coming back has them), and a new visitor's empty browser."""
    started = time.perf_counter()
    page.goto(url)
    page.locator(UPLOADER).wait_for(timeout=120_000)
    out["cold_visit_s"] = time.perf_counter() - started
    page.get_by_text("Upload an image or pick one").wait_for(timeout=120_000)  # the index has loaded
    out["cold_ready_s"] = time.perf_counter() - started
    # A later visit comes later: the first page has finished its run and every request it made.
    page.wait_for_function(IDLE, timeout=120_000)
    page.wait_for_load_state("networkidle")
    later, fresh = [], []
    for _ in range(visits):
        other = page.context.new_page()
        t = time.perf_counter()
        other.goto(url)
        other.locator(UPLOADER).wait_for(timeout=60_000)
        later.append(time.perf_counter() - t)
        other.close()
        ctx = browser.new_context(viewport={"width": 1600, "height": 1200})
        other = ctx.new_page()
        t = time.perf_counter()
        other.goto(url)
        other.locator(UPLOADER).wait_for(timeout=60_000)
        fresh.append(time.perf_counter() - t)
        ctx.close()
    out["first_visit_s"] = statistics.median(later)
    out["first_visit_all_s"] = later
    out["new_visitor_s"] = statistics.median(fresh)
    out["new_visitor_all_s"] = fresh


def search_step(page, out, files, actions: int, k: int) -> None:
    """Uploads, "Random" and "More like this", each timed until the new results are painted."""
    uploads, seen = [], []
    for f in files:
        uploads.append(answer(page, lambda: page.locator("input[type=file]").set_input_files(str(f)),
                              until=caption_changed(query_caption(page))))
        if query_caption(page) != f"Upload: {f.name}":
            raise SystemExit(f"the upload of {f.name} showed {query_caption(page)!r}")
        seen.append(pictures(page))
    randoms = []
    for _ in range(actions):
        before = query_caption(page)
        randoms.append(answer(page, lambda: page.locator(".st-key-random button").click(),
                              until=caption_changed(before)))
        seen.append(pictures(page))
    mores = []
    for i in range(actions):
        before = query_caption(page)
        mores.append(answer(page, lambda: click_more(page, i % k), until=caption_changed(before)))
        seen.append(pictures(page))
    if min(seen) < 2 * k:
        raise SystemExit(f"a result grid showed only {min(seen)} loaded pictures (expected {2 * k} at least)")
    out["result_pictures_min"] = min(seen)
    for name, xs in (("upload", uploads), ("random", randoms), ("more_like_this", mores)):
        s = stats(xs)
        out[f"{name}_p50_s"], out[f"{name}_p95_s"], out[f"{name}_n"] = s["p50"], s["p95"], s["n"]


def map_step(page, out, received: list, actions: int) -> None:
    """The Map view: ready time and bytes, then hovers and clicks on a code-space neighbour."""
    received[0] = 0
    out["map_ready_s"] = answer(page, lambda: page.get_by_test_id("stSidebar").get_by_text("Map", exact=True)
                                .click(), until=drawn(2), timeout=180)
    page.wait_for_timeout(300)  # frames still in flight count toward this render
    out["map_view_bytes"] = received[0]
    clicks, click_bytes, hovers, on_target = [], [], 0, 0
    for _ in range(min(actions, 5)):
        point = far_neighbour(page)
        if point is None:
            raise SystemExit("no neighbour drawn in the code-space map")
        page.mouse.move(point["x"], point["y"])
        try:
            page.locator("#vg-tooltip-element.visible img").wait_for(timeout=3000)
            hovers += 1
        except Exception:  # noqa: BLE001 - counted: a hover that showed no picture
            pass
        before = page.evaluate(QUERY_ITEM)
        received[0] = 0
        # A dot drawn over the neighbour may take the click: any new query counts, and is tallied.
        clicks.append(answer(page, lambda: page.mouse.click(point["x"], point["y"]), timeout=180,
                             until=f"() => ({QUERY_ITEM})() !== '{before}' && ({drawn(2)})()"))
        page.wait_for_timeout(300)
        click_bytes.append(received[0])
        on_target += page.evaluate(QUERY_ITEM) == str(point["id"])
    out["map_click_s"] = statistics.median(clicks)
    out["map_click_all_s"] = clicks
    out["map_click_bytes"] = int(max(click_bytes))
    out["map_bytes"] = int(max(out["map_view_bytes"], out["map_click_bytes"]))
    out["map_hover_pictures"] = f"{hovers}/{len(clicks)}"  # hovers on a neighbour that showed its picture
    out["map_clicks_on_target"] = f"{on_target}/{len(clicks)}"  # clicks whose new query is that neighbour


def shoot(page, folder: Path, view: str) -> None:
    """The page as it is now at a phone's width and at a wide desktop's, whole length (Streamlit scrolls
    inside its own container, so the window is made as tall as the page)."""
    folder.mkdir(parents=True, exist_ok=True)
    for width in (390, 1600):
        page.set_viewport_size({"width": width, "height": 1200})
        page.wait_for_timeout(1500)  # charts re-lay out to the new width
        height = page.evaluate("""() => Math.max(...[...document.querySelectorAll('[data-testid="stMain"], '
                                  + '[data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]')]
                                  .map(e => e.scrollHeight))""")
        page.set_viewport_size({"width": width, "height": min(int(height) + 40, 12000)})
        page.wait_for_timeout(1000)
        page.screenshot(path=str(folder / f"page-{view}-{width}.png"))
    page.set_viewport_size({"width": 1600, "height": 1200})
    page.wait_for_timeout(500)


TARGETS = {"cold_visit_s": 2.5, "first_visit_s": 1.0, "upload_p50_s": 0.3, "random_p50_s": 0.25, "map_ready_s": 1.5,
           "map_bytes": 1_000_000}


def table(r: dict) -> str:
    rows = [("first visit after the server starts (upload widget shows)", "cold_visit_s"),
            ("… until the index has loaded", "cold_ready_s"),
            ("a later visit, new tab (upload widget shows), median", "first_visit_s"),
            ("a new visitor, empty browser cache, median", "new_visitor_s"),
            ("upload → painted, p50 / p95", "upload"), ("\"Random\" → painted, p50 / p95", "random"),
            ("\"more like this\" → painted, p50 / p95", "more_like_this"), ("Map view ready", "map_ready_s"),
            ("Map click on a neighbour → new query painted, median", "map_click_s"),
            ("bytes per Map render (largest of entering and a click)", "map_bytes"),
            ("Quality view ready", "quality_ready_s")]
    lines = ["| | measured | target |", "|---|---|---|"]
    for title, key in rows:
        if key in ("upload", "random", "more_like_this"):
            value = f"{r[key + '_p50_s']:.2f} s / {r[key + '_p95_s']:.2f} s"
            target = TARGETS.get(key + "_p50_s")
        elif key == "map_bytes":
            value, target = f"{r[key] / 1e6:.2f} MB", TARGETS[key]
        else:
            value, target = f"{r[key]:.2f} s", TARGETS.get(key)
        shown = "" if target is None else (f"≤ {target / 1e6:.0f} MB" if key == "map_bytes" else f"≤ {target} s")
        lines.append(f"| {title} | {value} | {shown} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", help="index directory the server opens (or --photos)")
    ap.add_argument("--photos", type=int, metavar="N",
                    help="instead of --index: N generated 12-megapixel JPEGs in nested folders, indexed first")
    ap.add_argument("--photo-folder", type=Path, default=Path("/tmp/imgsearch-photos"),
                    help="where --photos writes them (kept: a second run reuses them; default /tmp/imgsearch-photos)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--actions", type=int, default=15, help="uploads, random picks and 'more like this' clicks (each)")
    ap.add_argument("--visits", type=int, default=5, help="later visits, each in a new browser context")
    ap.add_argument("--screenshots", type=Path, help="also save every view at 390 px and 1,600 px wide here")
    ap.add_argument("--app", default="app.py", help="the page to serve (another version of app.py, to compare)")
    args = ap.parse_args(argv)
    if (args.index is None) == (args.photos is None):
        ap.error("give --index DIR or --photos N")
    result: dict = {}
    if args.photos:
        from imgsearch.photos import photo_index

        args.index, result["photo_build"] = photo_index(args.photo_folder, args.photos)
    try:
        measure(args.index, actions=args.actions, visits=args.visits, screenshots=args.screenshots, app=args.app,
                out=result)
    except Exception as e:  # noqa: BLE001 - keep what was measured, and say where it stopped
        result["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.json:
        write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_all_s")}, indent=2))
    if "failed" in result:
        print("stopped early:", result["failed"])
        return 1
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
