"""Several people at once: headless Chromium pages clicking "Random" while the index is rebuilt and swapped.

    .venv/bin/python scripts/load_page.py --index /tmp/load-index --json docs/load.json

Serves the page over --index on 127.0.0.1 (a free port), opens --sessions pages (each its own Streamlit
session), and has each click "Random" and wait until the page has answered, again and again, for
--seconds. At --rebuild-at seconds it runs `imgsearch build-index --data REBUILD --out INDEX`, which
publishes a new build atomically under the running server; clicking goes on at least --after seconds past
the swap. Everything stops by itself: the build is killed if it outlasts --build-timeout, then the
pages, the browser and the server stop.

Counts as an error: an exception or error box on a page, a page error in the browser, a click not
answered within --answer-timeout, a lost connection, a traceback in the server's output. Reports
picks per second over all sessions and click -> painted p50/p95, before, during and after the rebuild.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pagekit import BROWSER_ARGS, CHROMIUM, ROOT, serve

from imgsearch.report import write_json

# 1,000 images (one class folder, so the rebuilt collection has no labels): its build fits well inside a
# 60-s run beside six pages (the whole 10,000-image test split took 65 s there, longer than the run).
DEFAULT_REBUILD = ROOT.parent / "shared" / "datasets" / "cifar10-jpg" / "test" / "cat"
# Where the page names its query ("Item 123"): a figure's caption (or st.image's, in earlier versions of the page).
CAPTIONS_JS = "'[data-testid=\"stMain\"] figcaption, [data-testid=\"stMain\"] [data-testid=\"stImageCaption\"]'"
# A pick has been answered: a new query caption, Streamlit idle, nothing stale, every picture loaded.
PICKED = """(before) => {
  const s = document.querySelector('[data-test-script-state]');
  if (!s || s.getAttribute('data-test-script-state') === 'running') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  const q = [...document.querySelectorAll(CAPTIONS)].find(e => /^Item \\d+$/.test(e.textContent.trim()));
  if (!q || q.textContent.trim() === before) return false;
  return [...document.querySelectorAll('[data-testid="stMain"] img')].every(i => i.complete && i.naturalWidth > 0);
}""".replace("CAPTIONS", CAPTIONS_JS)
QUERY = """() => ([...document.querySelectorAll(CAPTIONS)]
                  .find(e => /^Item \\d+$/.test(e.textContent.trim())) || {textContent: ''}).textContent.trim()""".replace(
    "CAPTIONS", CAPTIONS_JS)
CONNECTION = "() => document.querySelector('[data-test-connection-state]')?.getAttribute('data-test-connection-state')"
PROBLEMS = """() => [...document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
                     .map(e => e.innerText.slice(0, 200))"""
ITEMS = """() => (document.querySelector('[data-testid="stSidebar"]')?.innerText.match(/([\\d,]+) images from/) || [])[1] || ''"""


async def session(n: int, browser, url: str, start: asyncio.Event, ready: list, clock: dict, timeout: float,
                  record: dict) -> None:
    """One visitor: open the page, wait for the others, then click "Random" until the run ends, timing each answer."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.on("pageerror", lambda e: record["errors"].append(f"session {n}: page error: {e}"))
    try:
        await page.goto(url)
        await page.get_by_text("Upload an image or pick one").wait_for(timeout=120_000)
        ready.append(n)
        await start.wait()
        clock0 = clock["start"]
        while time.perf_counter() < clock["stop"]:  # the rebuild may move the end later, see drive
            before = await page.evaluate(QUERY)
            started = time.perf_counter()
            await page.locator(".st-key-random button").click()
            try:
                # The same item drawn twice in a row (1 in the collection's size) would read as no answer.
                await page.wait_for_function(PICKED, arg=before, timeout=timeout * 1000, polling="raf")
            except Exception:  # noqa: BLE001 - a click left unanswered is an error, and the session goes on
                record["errors"].append(f"session {n} at {started - clock0:.1f} s: no answer within {timeout:.0f} s "
                                        f"(connection: {await page.evaluate(CONNECTION)})")
                continue
            took = time.perf_counter() - started
            problems = await page.evaluate(PROBLEMS)
            record["errors"] += [f"session {n} at {started - clock0:.1f} s: {p}" for p in problems]
            record["clicks"].append({"session": n, "at_s": started - clock0, "s": took,
                                     "items": await page.evaluate(ITEMS)})
    finally:
        await ctx.close()


async def drive(url: str, sessions: int, seconds: float, rebuild: list[str] | None, rebuild_at: float,
                build_timeout: float, answer_timeout: float, alone: int, after: float) -> dict:
    from playwright.async_api import async_playwright

    record = {"errors": [], "clicks": [], "alone": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        if alone:  # one page with the server to itself: the figure the load is compared with
            ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await ctx.new_page()
            await page.goto(url)
            await page.get_by_text("Upload an image or pick one").wait_for(timeout=120_000)
            for _ in range(alone):
                before = await page.evaluate(QUERY)
                started = time.perf_counter()
                await page.locator(".st-key-random button").click()
                await page.wait_for_function(PICKED, arg=before, timeout=answer_timeout * 1000, polling="raf")
                record["alone"].append(time.perf_counter() - started)
            await ctx.close()
        start, ready, clock = asyncio.Event(), [], {}
        tasks = [asyncio.create_task(session(n, browser, url, start, ready, clock, answer_timeout, record))
                 for n in range(sessions)]
        while len(ready) < sessions and not any(t.done() for t in tasks):  # every page open before the clock starts
            await asyncio.sleep(0.1)
        clock0 = clock["start"] = time.perf_counter()
        clock["stop"] = clock0 + seconds
        start.set()
        build = None
        if rebuild:
            await asyncio.sleep(rebuild_at)
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*rebuild, cwd=ROOT, stdout=subprocess.PIPE,
                                                        stderr=subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=build_timeout)
                code = proc.returncode
            except asyncio.TimeoutError:
                proc.kill()
                out, code = b"", "killed: outlasted --build-timeout"
            finished = time.perf_counter()
            clock["stop"] = max(clock["stop"], finished + after)  # some picks from the new index, whenever it came
            build = {"command": " ".join(rebuild[1:]), "started_s": started - clock0,
                     "finished_s": finished - clock0, "returncode": code,
                     "summary": (out.decode(errors="replace").strip().splitlines() or [""])[-1][-300:]}
            if code != 0:
                record["errors"].append(f"the rebuild failed: {code}")
        await asyncio.gather(*tasks)
        await browser.close()
    record["build"] = build
    record["run_s"] = clock["stop"] - clock0
    return record


def summary(record: dict, sessions: int) -> dict:
    clicks, seconds = record["clicks"], record["run_s"]
    times = [c["s"] for c in clicks]

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else None

    out = {"sessions": sessions, "seconds": seconds, "picks": len(clicks), "errors": len(record["errors"]),
           "error_details": record["errors"][:20], "picks_per_s": len(clicks) / seconds,
           "click_p50_s": pct(times, 50), "click_p95_s": pct(times, 95),
           "alone_p50_s": pct(record["alone"], 50), "alone_n": len(record["alone"])}
    build = record["build"]
    if build:
        phases = {"before": [c["s"] for c in clicks if c["at_s"] < build["started_s"]],
                  "during": [c["s"] for c in clicks if build["started_s"] <= c["at_s"] < build["finished_s"]],
                  "after": [c["s"] for c in clicks if c["at_s"] >= build["finished_s"]]}
        out["rebuild"] = build
        out["phases"] = {k: {"picks": len(v), "p50_s": pct(v, 50), "p95_s": pct(v, 95)} for k, v in phases.items()}
        last = {}
        for c in clicks:
            last[c["session"]] = c["items"]
        out["items_seen_last"] = sorted(set(last.values()))  # what each session's sidebar said at its last pick
        built = re.search(r"Indexed (\d+) images", build["summary"])
        if built:
            out["sessions_on_new_index"] = sum(v == f"{int(built.group(1)):,}" for v in last.values())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="an index directory made by `imgsearch build-index --out`; "
                                                   "the rebuild replaces what it serves")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rebuild", default=str(DEFAULT_REBUILD), help="folder the mid-run rebuild indexes")
    ap.add_argument("--rebuild-at", type=float, default=10, help="seconds into the run")
    ap.add_argument("--rebuild-args", default="--no-maps",
                    help="more arguments for build-index (default --no-maps: beside six pages on two cores even "
                         "1,000 images took 60 s with maps, longer than the run)")
    ap.add_argument("--after", type=float, default=10,
                    help="clicking goes on at least this long after the swap (it lengthens the run if need be)")
    ap.add_argument("--no-rebuild", action="store_true")
    ap.add_argument("--build-timeout", type=float, default=240)
    ap.add_argument("--answer-timeout", type=float, default=30, help="a click unanswered this long is an error")
    ap.add_argument("--alone", type=int, default=15, help="clicks of one page alone before the load (0: skip)")
    ap.add_argument("--app", default="app.py", help="the page to serve (another version of app.py, to compare)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    rebuild = None if args.no_rebuild else [str(Path(sys.executable).parent / "imgsearch"), "build-index",
                                            "--data", args.rebuild, "--out", args.index, *args.rebuild_args.split()]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with serve(args.index, app=args.app, log=log) as (url, _):
            assert url.startswith("http://127.0.0.1:")
            record = asyncio.run(drive(url, args.sessions, args.seconds, rebuild, args.rebuild_at,
                                       args.build_timeout, args.answer_timeout, args.alone, args.after))
        server_log = log.read_text(errors="replace")
    tracebacks = len(re.findall(r"^Traceback", server_log, flags=re.M))
    if tracebacks:
        record["errors"].append(f"{tracebacks} traceback(s) in the server's output")
    result = summary(record, args.sessions)
    result["app"] = args.app
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.json:
        write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
