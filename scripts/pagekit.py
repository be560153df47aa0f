"""What benchmark_page.py and load_page.py share: a page server on 127.0.0.1 and a way to tell when a
Chromium page has finished answering (the script ran, nothing is stale, every picture has loaded).

Timing lives in the scripts; this module only starts, drives and waits.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium, as tests/test_browser.py uses; Playwright's download is not used
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]

# True once the page has answered the last action: Streamlit ran the script (the observer saw the
# "running" state), is idle again, shows no stale element, and every picture in the page has decoded.
ANSWERED = """() => {
  const s = document.querySelector('[data-test-script-state]');
  if (!window.__ran || !s || s.getAttribute('data-test-script-state') === 'running') return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  return [...document.querySelectorAll('[data-testid="stMain"] img, section.main img')]
    .every(i => i.complete && i.naturalWidth > 0);
}"""

# Arms ANSWERED before an action: it turns true only after a script run that starts from now on.
ARM = """() => {
  window.__ran = false;
  if (window.__observer) window.__observer.disconnect();
  const s = document.querySelector('[data-test-script-state]');
  // A run can start and finish between two callbacks (a fast run on an idle machine, or a callback late on
  // a busy one): the records' old values still show it ran.
  window.__observer = new MutationObserver((records) => {
    if (s.getAttribute('data-test-script-state') === 'running'
        || records.some(r => r.oldValue === 'running')) window.__ran = true;
  });
  window.__observer.observe(s, {attributes: true, attributeFilter: ['data-test-script-state'], attributeOldValue: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(index: str | os.PathLike, *, app: str | os.PathLike = "app.py", port: int | None = None, timeout: float = 120,
          log: str | os.PathLike | None = None, home: str | os.PathLike | None = None):
    """`streamlit run app.py` over `index` on 127.0.0.1; yields (url, seconds until it answered /health).

    `app` may name another version of the page; it runs from the repository root, with its
    .streamlit/config.toml. `log`: a file for the server's output (default: dropped). `home`: the
    server's HOME (Streamlit keeps its own files there), e.g. a test's temporary folder. The server runs
    in a process group of its own, which ends with the block, however the block ends."""
    port = port or free_port()
    env = {**os.environ, "IMGSEARCH_INDEX": str(index), **({"HOME": str(home)} if home else {})}
    log = open(log or os.devnull, "wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {proc.returncode}")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s")
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        yield url, time.perf_counter() - started
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """End a process started with start_new_session=True and everything it started."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def launch(playwright):
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)


def answer(page, action, *, until: str | None = None, timeout: float = 60) -> float:
    """Seconds from `action()` until the page has answered it (and `until`, a JS predicate, holds)."""
    page.evaluate(ARM)
    started = time.perf_counter()
    action()
    check = ANSWERED if until is None else f"() => ({ANSWERED})() && ({until})()"
    page.wait_for_function(check, timeout=timeout * 1000, polling="raf")
    return time.perf_counter() - started


def query_caption(page) -> str:
    """The text that names the current query ("Item 123", "Upload: x.jpg"), or "" before there is one."""
    return page.evaluate("""() => {
      const el = [...document.querySelectorAll('[data-testid="stMain"] figcaption, [data-testid="stMain"] [data-testid="stImageCaption"], [data-testid="stMain"] .query-caption')]
        .find(e => /^(Item \\d+|Upload: )/.test(e.textContent.trim()));
      return el ? el.textContent.trim() : '';
    }""")


def caption_changed(before: str) -> str:
    """A JS predicate: the query caption is there and differs from `before`."""
    import json

    return f"""() => {{
      const el = [...document.querySelectorAll('[data-testid="stMain"] figcaption, [data-testid="stMain"] [data-testid="stImageCaption"], [data-testid="stMain"] .query-caption')]
        .find(e => /^(Item \\d+|Upload: )/.test(e.textContent.trim()));
      return !!el && el.textContent.trim() !== {json.dumps(before)};
    }}"""


# The vega View behind the n-th chart, found through React's fiber tree (Streamlit does not expose it),
# and the page position and id of every drawn point whose datum has a role (query, neighbour, sample).
MAP_MARKS = """(n) => {
  const box = document.querySelectorAll('[data-testid="stVegaLiteChart"]')[n];
  const isView = v => v && typeof v === 'object' && typeof v.scenegraph === 'function' && typeof v.origin === 'function';
  let view = null;
  for (let node = box.querySelector('canvas, svg'); node && !view && node !== document.body; node = node.parentElement) {
    const key = Object.keys(node).find(k => k.startsWith('__reactFiber$'));
    for (let f = key ? node[key] : null, d = 0; f && !view && d < 40; f = f.return, d++) {
      for (let h = f.memoizedState, g = 0; h && typeof h === 'object' && g < 60; h = h.next, g++) {
        const m = h.memoizedState;
        if (isView(m)) { view = m; break; }
        if (m && typeof m === 'object' && isView(m.current)) { view = m.current; break; }
      }
    }
  }
  if (!view) return null;
  const [ox, oy] = view.origin();
  const r = box.querySelector('canvas, svg').getBoundingClientRect();
  const found = [];
  const walk = (item, x, y) => {
    if (!item) return;
    if (item.datum && item.datum.role && item.mark && item.mark.marktype === 'symbol') {
      found.push({x: r.left + ox + x + item.x, y: r.top + oy + y + item.y, id: item.datum.id, role: item.datum.role});
      return;
    }
    const gx = item.mark && item.mark.marktype === 'group' ? x + (item.x || 0) : x;
    const gy = item.mark && item.mark.marktype === 'group' ? y + (item.y || 0) : y;
    for (const child of (item.items || [])) walk(child, gx, gy);
  };
  walk(view.scenegraph().root, 0, 0);
  return found;
}"""


def far_neighbour(page, chart: int = 0, roles: tuple[str, ...] = ("neighbour",), clear_px: float = 15) -> dict | None:
    """The neighbour (or other mark of `roles`) drawn farthest from the query: a click near the query's
    cross would hit the cross. When even that one lies under the cross, the farthest sampled dot."""
    marks = page.evaluate(MAP_MARKS, chart) or []
    query = next((m for m in marks if m["role"] == "query"), None)

    def away(m):
        return 1e9 if query is None else ((m["x"] - query["x"]) ** 2 + (m["y"] - query["y"]) ** 2) ** 0.5

    for wanted in (roles, ("sample",)):
        candidates = [m for m in marks if m["role"] in wanted]
        if candidates and away(best := max(candidates, key=away)) >= clear_px:
            return best
    return None
