"""A million-image collection to measure builds on: augmented views of the offline CIFAR-10 copy.

Each of the source's images gives `views` different 32x32 JPEG files (a random crop of 70-100%
of the image, a mirror half the time, a little brightness and contrast jitter), written as
DIR/<class>/<part>/<image>-<view>.jpg with 1,000 files per folder, so that listing stays fast.
About 1 GB of JPEG data (~4 GB on disk with 4 KB blocks). Used by `imgsearch benchmark --million`,
never by the test suite. DIR/.complete marks a finished collection (the dot keeps it out of builds).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

ITEMS = 1_000_000
PER_FOLDER = 1000  # files per leaf folder
JPEG_QUALITY = 90  # the offline copy's own files are JPEGs of about this quality
MARKER = ".complete"
# The source images: the offline CIFAR-10 copy beside the repository (../shared/datasets/README.md).
OFFLINE_TRAIN = str(Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cifar10-jpg" / "train")
CODE_SWEEP_SEARCH_KS = (8_000, 10_000, 13_000, 16_000)  # Annoy's trees: around the shipped SEARCH_K, where recall@10 crosses 0.98
CODE_SWEEP_PROBES = (16, 24, 32, 48)  # faiss's lists or graph: around the shipped PROBES


_SOURCES: list[str] = []  # each worker's copy of the source file list, set once by _init


def _init(sources: list[str]) -> None:
    global _SOURCES
    _SOURCES = sources


def _write_items(job: tuple[str, list[int]]) -> int:
    """Write the given items (views of source images) into one leaf folder."""
    folder, items = job
    os.makedirs(folder, exist_ok=True)
    n_src = len(_SOURCES)
    for item in items:
        src, view = item % n_src, item // n_src
        rng = np.random.default_rng([item, 12345])  # item i is the same file on every run and machine
        with Image.open(_SOURCES[src]) as im:
            img = im.convert("RGB")
        w, h = img.size
        scale = rng.uniform(0.7, 1.0)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((32, 32), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
        img.save(os.path.join(folder, f"{src:05d}-{view:03d}.jpg"), quality=JPEG_QUALITY)
    return len(items)


def source_images(source: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The source's images, the classes taking turns (so any prefix covers every class), and each one's class."""
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(f.relative_to(root).parts[0], []).append(f)
    turns = sorted(((i, c, f) for c, fs in by_class.items() for i, f in enumerate(fs)), key=lambda t: (t[0], t[1]))
    return [str(f) for _, _, f in turns], [c for _, c, _ in turns]


def write_million(out: str | os.PathLike, items: int = ITEMS, source: str | os.PathLike = OFFLINE_TRAIN,
                  workers: int | None = None, progress: bool = True) -> Path:
    """Write the collection into `out` unless a finished one is there; returns `out`.

    Item i is view i // n of source image i % n, so the first n items are one view of every
    source image and any prefix of the collection covers all classes evenly.
    """
    out = Path(out)
    if (out / MARKER).is_file() and (out / MARKER).read_text().strip() == str(items):
        return out
    files, classes = source_images(source)
    if not files:
        raise FileNotFoundError(f"{source} holds no images to make the collection from")
    # Every leaf folder holds items of one class only: group the items by their source's class.
    by_class: dict[str, list[int]] = {}
    for item in range(items):
        by_class.setdefault(classes[item % len(files)], []).append(item)
    jobs = [(str(out / cls / f"{p // PER_FOLDER:04d}"), its[p:p + PER_FOLDER])
            for cls, its in by_class.items() for p in range(0, len(its), PER_FOLDER)]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(files,)) as pool, \
            tqdm(total=items, desc="writing the collection", unit="img", disable=not progress, mininterval=1.0) as bar:
        for n in pool.map(_write_items, jobs, chunksize=4):
            bar.update(n)
    (out / MARKER).write_text(str(items))
    return out



# ---- the measurement: `imgsearch benchmark --million DIR` ----------------------------------

PHASES = ("clean", "resume", "queries", "update", "duplicates")
UPDATE_ITEMS = 10_000  # images added before the timed --update: a day's photos, not a new collection
RSS_POLL_SECONDS = 0.2


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """Resident memory of a process and all its descendants (the build's worker processes count too), in MB:
    (all resident pages, anonymous pages only). The first includes pages of memory-mapped files,
    which the kernel can drop at any time; the second is what the build itself holds."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    total = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            total += int(fields.get("VmRSS", "0 kB").split()[0])
            anon += int(fields.get("RssAnon", "0 kB").split()[0])
        except (OSError, ValueError):
            continue
    return total / 1024, anon / 1024


def run_build(args: list[str], *, kill_when=None, command: str = "build-index") -> dict:
    """Run `imgsearch COMMAND ARGS` in a subprocess: wall time, peak resident memory of its process tree,
    and whether `kill_when()` (polled) made us SIGKILL it."""
    import signal
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "imgsearch.cli", command, *args],
                            stdout=subprocess.DEVNULL)
    peak, peak_anon, killed = 0.0, 0.0, False
    while proc.poll() is None:
        total, anon = tree_memory_mb(proc.pid)
        peak, peak_anon = max(peak, total), max(peak_anon, anon)
        if kill_when is not None and kill_when():
            proc.send_signal(signal.SIGKILL)
            killed = True
            proc.wait()
            break
        time.sleep(RSS_POLL_SECONDS)
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"{command} {' '.join(args)} failed with exit code {proc.returncode}")
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": peak, "peak_anon_mb": peak_anon, "killed": killed}


def add_images(collection: Path, first: int, count: int, source: str | os.PathLike = OFFLINE_TRAIN) -> list[Path]:
    """Write `count` more views (items first..first+count-1) into <class>/added/ folders; returns the folders."""
    files, classes = source_images(source)
    _init(files)
    by_class: dict[str, list[int]] = {}
    for item in range(first, first + count):
        by_class.setdefault(classes[item % len(files)], []).append(item)
    folders = []
    for cls, its in by_class.items():
        folder = collection / cls / "added"
        _write_items((str(folder), its))
        folders.append(folder)
    return folders


def benchmark_million(collection: str | os.PathLike, model: str | os.PathLike, work: Path, *,
                      items: int = ITEMS, queries: int = 200, added: int = UPDATE_ITEMS, only=None) -> dict:
    """The `million` key of the benchmark report, measured end to end.

    Five phases: a clean build, a build killed at half and resumed, queries, an update, and the
    whole-collection near-duplicate pass (`imgsearch duplicates` at its defaults). Each
    finished phase's figures are kept in WORK/million-phases.json with the load average at its
    start (other work on the machine shows there), so an interrupted run given the same work
    folder continues with the next phase; delete an entry to measure that phase again. `only`
    (phase names) measures just those phases again and reports the others as recorded.
    """
    if only is not None and not set(only) <= set(PHASES):
        raise ValueError(f"The phases are {', '.join(PHASES)}.")
    run = MillionRun(write_million(collection, items), model, work, items=items, queries=queries, added=added)
    # A first run builds first; a later one measures queries and the update on the index it finds before
    # rebuilding it, so that a clean build measured again can be compared with a resumed one at once.
    order = (("clean", "resume", "queries", "update", "duplicates") if not run.out.exists()
             else ("queries", "update", "duplicates", "clean", "resume"))
    for name in order:
        if only is None or name in only:
            if only is not None:
                run.phases.pop(name, None)
            getattr(run, f"{name}_phase")()
        elif name in run.phases:
            run.report.update(run.phases[name])
    return run.report


class MillionRun:
    """One run of the million benchmark: its work folder, the phases recorded so far, and each phase."""

    def __init__(self, collection: Path, model, work: Path, *, items: int, queries: int, added: int):
        import json

        work.mkdir(parents=True, exist_ok=True)
        self.collection, self.work, self.items, self.queries, self.added = collection, work, items, queries, added
        self.out, self.resumed_out = work / "million-index", work / "million-resumed"
        self.common = ["--data", str(collection), "--model", str(model)]
        self.report: dict = {"items": items, "collection": str(collection)}
        self.saved = work / "million-phases.json"
        self.phases = json.loads(self.saved.read_text()) if self.saved.is_file() else {}

    def pending(self, phase: str, needs_index: bool = True) -> bool:
        if phase in self.phases and (self.out.exists() or not needs_index):
            self.report.update(self.phases[phase])
            return False
        self.phases["_load"] = os.getloadavg()[0]
        return True

    def record(self, phase: str, **figures) -> None:
        import json

        figures[f"{phase}_load_average"] = round(self.phases.pop("_load"), 2)
        self.phases[phase] = figures
        self.saved.write_text(json.dumps(self.phases, indent=1))
        self.report.update(figures)

    def clean_phase(self) -> None:
        from .integrity import read_meta
        from .publish import resolve

        if self.pending("clean", needs_index=False) or not self.out.exists():
            self.phases.setdefault("_load", os.getloadavg()[0])
            clean = run_build([*self.common, "--out", str(self.out)])
            meta = read_meta(self.out)
            self.record("clean", build_seconds=round(clean["seconds"], 1), build_peak_rss_mb=round(clean["peak_rss_mb"]),
                        build_peak_anon_mb=round(clean["peak_anon_mb"]),
                        build_images_per_s=round(meta["items"] / clean["seconds"]), indexed=meta["items"],
                        ingest_seconds=meta["ingest"]["seconds"], space_seconds=meta["space_seconds"],
                        maps_seconds=(meta["maps"] or {}).get("seconds"),
                        index_gb=round(sum(p.stat().st_size for p in resolve(self.out).iterdir()) / 2**30, 2))

    def resume_phase(self) -> None:
        import shutil

        from .integrity import read_meta

        if not self.pending("resume"):
            return
        if read_meta(self.out)["update"] is not None:
            # An update changed the index since its clean build; the resumed build is compared with a
            # clean one (its batches, items and codes), so the clean build is made and measured again.
            self.phases.pop("clean", None)
            self.clean_phase()
            self.phases["_load"] = os.getloadavg()[0]
        meta = read_meta(self.out)
        # Killed when half the batches are written, then run again with the same arguments.
        batches = meta["ingest"]["batches"]
        builds = self.resumed_out.with_name(self.resumed_out.name + ".builds")
        shutil.rmtree(builds, ignore_errors=True)

        def half_done() -> bool:
            return sum(len(list(w.glob("batch-*.npz"))) for w in builds.glob("*.work")) >= max(1, batches // 2)
        killed = run_build([*self.common, "--out", str(self.resumed_out)], kill_when=half_done)
        resumed = run_build([*self.common, "--out", str(self.resumed_out)])
        again = read_meta(self.resumed_out)
        self.record("resume", resume_killed_at_seconds=round(killed["seconds"], 1),
                    resume_seconds=round(resumed["seconds"], 1),
                    resume_overhead=round((killed["seconds"] + resumed["seconds"]) / self.report["build_seconds"], 3),
                    resumed_batches=again["ingest"]["resumed_batches"], resume_same_items=again["items"] == meta["items"],
                    resume_same_codes=again["checksums"]["codes.npy"] == meta["checksums"]["codes.npy"])
        shutil.rmtree(builds, ignore_errors=True)
        self.resumed_out.unlink(missing_ok=True)

    def queries_phase(self) -> None:
        if self.pending("queries"):
            self.record("queries", **measure_queries(self.out, self.queries))

    def update_phase(self) -> None:
        import shutil

        from .integrity import read_meta

        if not self.pending("update"):
            return
        # --update after adding images to the collection; the added files are removed again afterwards
        # (the index keeps them, so in a later run the same files count as changed, not added).
        folders = add_images(Path(self.collection), self.items, self.added)
        try:
            update = run_build([*self.common, "--out", str(self.out), "--update"])
            u = read_meta(self.out)["update"]
            figures = dict(update_seconds=round(update["seconds"], 1), update_peak_rss_mb=round(update["peak_rss_mb"]),
                           update_peak_anon_mb=round(update["peak_anon_mb"]),
                           update_added=u["added"], update_changed=u["changed"], update_removed=u["removed"],
                           update_unchanged=u["unchanged"], update_items=u["items"])
        finally:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
        self.record("update", **figures)


    def duplicates_phase(self) -> None:
        import json

        if not self.pending("duplicates"):
            return
        found_file = self.work / "million-duplicates.json"
        run = run_build(["--index", str(self.out), "--json", str(found_file)], command="duplicates")
        found = json.loads(found_file.read_text())
        self.record("duplicates", duplicates_seconds=round(run["seconds"], 1),
                    duplicates_peak_rss_mb=round(run["peak_rss_mb"]), duplicates_peak_anon_mb=round(run["peak_anon_mb"]),
                    duplicates_space=found["space"], duplicates_threshold=found["threshold"],
                    duplicates_pairs=found["pairs"], duplicates_groups=len(found["groups"]),
                    duplicates_items=found["items"])


def measure_queries(out: Path, queries: int) -> dict:
    """Queries as the page makes them (an uploaded JPEG, decoded, encoded, searched) on the index at `out`:
    each space's p50 and p95, the code space's recall against exact and its knob's sweep, the page's query."""
    import io
    import time

    from .benchmark import ExactCodeSearch, percentiles, recall_at, timed
    from .search import Index
    from .spaces import DEFAULT_SPACES
    from .spaces.base import Query

    t = time.perf_counter()
    index = Index.load(out)
    figures = {"load_seconds": round(time.perf_counter() - t, 2)}
    test_files, _ = source_images(Path(OFFLINE_TRAIN).parent / "test")
    rng = np.random.default_rng(0)
    uploads = [Path(test_files[i]).read_bytes() for i in rng.choice(len(test_files), queries, replace=False)]
    query_list = [Query(index.query_pixels(io.BytesIO(u))[0], index.encode) for u in uploads]
    for name, space in index.spaces.items():
        vectors = [space.embed(q) for q in query_list]
        found, times = timed(lambda v: space.search(v, 10)[0], vectors)
        figures[f"{name}_p50_ms"], figures[f"{name}_p95_ms"] = percentiles(times)
        if name == "code":
            exact = ExactCodeSearch(index.codes)
            truth = [exact.search(v, 10) for v in vectors]
            figures["code_recall_at_10"] = round(recall_at(found, truth), 4)
            del exact
            # The trade-off around the shipped setting, on this build's structure (measured after the figures
            # above, so warm): recall moves by a few thousandths from one build to another.
            knob = space.structure.knob
            figures["code_sweep"] = []
            for value in {"probes": CODE_SWEEP_PROBES, "search_k": CODE_SWEEP_SEARCH_KS}.get(knob, ()):
                found_k, times_k = timed(lambda v: space.search(v, 10, **{knob: value})[0], vectors)
                figures["code_sweep"].append({knob: value, "recall_at_10": round(recall_at(found_k, truth), 4),
                                              "p50_ms": percentiles(times_k)[0]})
    _, times = timed(lambda u: index.search(io.BytesIO(u), 10, spaces=list(DEFAULT_SPACES)), uploads)
    figures["query_server_ms"] = percentiles(times)[0]
    _, times = timed(lambda u: index.search(io.BytesIO(u), 10, spaces=list(index.spaces)), uploads)
    figures["query_all_spaces_ms"] = percentiles(times)[0]
    return figures
