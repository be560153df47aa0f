"""Speed and scale: how fast encoding, building and searching are on this machine, and how the code
space's structures (exact, Annoy, faiss's lists and graph) trade recall against query time, side by side.

Absolute times on a shared 2-core machine are noisy; ratios measured in the same run are
stable, so the report quotes both.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import Collection
from .images import to_pixels
from .index import build_index
from .integrity import read_meta
from .knn import BruteForce, topk_ties_by_id
from .spaces.bits import HammingScan, binarise, fit_binariser, word_major
from .spaces.annoy_index import annoy_code_search
from .spaces.code import served_code_search
from .spaces.vectors import METRIC
from .spaces.pixel import squared_distances
from .projection import collection_maps
from .model import encode_pixels, load_checkpoint, pixels_to_tensor
from .search import Index
from .report import new_figure, save_figure
from .train import augment


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 95)), 3)


def timed(fn, items) -> tuple[list, list[float]]:
    out, times = [], []
    for x in items:
        t = time.perf_counter()
        out.append(fn(x))
        times.append(time.perf_counter() - t)
    return out, times


class ExactCodeSearch:
    """Brute-force cosine search over the codes, one query at a time: the reference Annoy is measured against."""

    def __init__(self, codes: np.ndarray):
        self.knn = BruteForce(codes, METRIC)

    def search(self, code: np.ndarray, k: int) -> np.ndarray:
        return self.knn.search(code[None], k)[0][0]


def blas_description() -> str:
    """Which BLAS kernel numpy runs here: figures measured under different kernels are compared by it."""
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i.get('internal_api')} {i.get('architecture')} x{i.get('num_threads')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def recall_at(found: list, truth: list, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def sweep(codes: np.ndarray, queries: np.ndarray, truth: list, trees=(10, 20, 40, 80),
          search_ks=(1000, 3000, 10000, 30000)) -> list[dict]:
    """Recall@10 and p50 latency of the code space as served for a grid of (n_trees, search_k)."""
    rows = []
    for n_trees in tqdm(trees, desc="sweep"):
        space = annoy_code_search(codes, n_trees=n_trees)
        for sk in search_ks:
            found, times = timed(lambda q: space.search(q, 10, search_k=sk)[0], queries)
            rows.append({"n_trees": n_trees, "search_k": sk, "recall_at_10": round(recall_at(found, truth), 4),
                         "p50_ms": percentiles(times)[0]})
        space.ann.unload()
    return rows


def rss_of_loaded_index(index_dir: Path) -> float:
    """Resident memory (MB) of a fresh process that has loaded the model and the index."""
    code = ("from imgsearch.search import Index; i = Index.load(%r); i.search(0, k=10); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])" % str(index_dir))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)


def realistic_codes(model, pixels: np.ndarray, n: int, seed: int = 0, batch: int = 2000) -> np.ndarray:
    """n codes of randomly cropped, flipped and colour-shifted versions of the collection's images.

    Uniform noise would make every neighbour equally far, and near-copies of a few points
    would make search artificially easy; augmented real images keep the collection's structure.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = np.empty((n, model.args.code_dim), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for s in tqdm(range(0, n, batch), desc="scale codes", unit="batch", mininterval=1.0):
            rows = rng.integers(0, len(pixels), min(batch, n - s))
            x = augment(pixels_to_tensor(pixels[rows]), g, crop_scale=0.5)
            out[s:s + len(rows)] = model.encode(x).numpy()
    return out


def run_benchmark(collection: Collection, model_path, *, queries: int = 1000, scale_items: int = 1_000_000,
                  scale_queries: int = 200, sweep_queries: int = 300, sweep_trees=(10, 20, 40),
                  sweep_search_ks=(1000, 2000, 4000, 8000, 10000, 16000), scale_trees: int = 32,
                  scale_search_ks=(5000, 10000, 20000, 40000), work_dir: Path | None = None,
                  progress: bool = True, scale: bool = True) -> dict:
    """Every figure of docs/speed.md; `scale=False` stops after the 50,000-item queries (a quick second
    run, e.g. under another BLAS kernel, to check that the query figures do not depend on it)."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="imgsearch-bench-"))
    model, info = load_checkpoint(model_path)
    report: dict = {"items": len(collection), "collection": collection.spec, "model": info["fingerprint"],
                    "threads": torch.get_num_threads()}
    measure_encoding(report, model, collection)
    measure_build(report, collection, model_path, work / "index", progress)
    index = Index.load(work / "index")
    code_q, truth = measure_queries(report, index, model, collection, queries)
    exact = {"p50_ms": report["exact_code_p50_ms"], "p95_ms": report["exact_code_p95_ms"]}
    report["code_structures"], report["code_structure_curves"] = compare_structures(
        index.codes, code_q, truth, exact, curve_queries=sweep_queries)
    report["rss_mb"] = rss_of_loaded_index(work / "index")
    report["blas"] = blas_description()
    if not scale:
        return report
    report["sweep"] = sweep(index.codes, code_q[:sweep_queries], truth[:sweep_queries], sweep_trees, sweep_search_ks)
    report["scale"] = measure_scale(model, collection, work, scale_items, scale_queries, scale_trees, scale_search_ks)
    return report


def measure_encoding(report: dict, model, collection: Collection) -> None:
    """Encoding: the database build's rate, and one upload from bytes to code."""
    n_enc = min(len(collection), 20000)
    t = time.perf_counter()
    encode_pixels(model, collection.pixels[:n_enc])
    report["encode_images_per_s"] = round(n_enc / (time.perf_counter() - t), 1)
    photo = Image.fromarray(collection.pixels[0]).resize((640, 480), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    upload = buf.getvalue()
    _, times = timed(lambda b: encode_pixels(model, to_pixels(b)[None]), [upload] * 200)
    report["upload_encode_p50_ms"], report["upload_encode_p95_ms"] = percentiles(times)


def measure_build(report: dict, collection: Collection, model_path, out: Path, progress: bool) -> None:
    """The index build with the default settings (encode, every space, from images already in memory), the
    2-D maps apart, and what it writes."""
    t = time.perf_counter()
    build_index(collection, model_path, out, maps=False, progress=progress)
    report["build_seconds"] = round(time.perf_counter() - t, 2)
    build_dir = out.resolve()
    t = time.perf_counter()
    collection_maps(np.load(build_dir / "codes.npy"), collection.pixels)  # the build's own codes
    report["map_seconds"] = round(time.perf_counter() - t, 2)
    report["index_mb"] = round(sum(f.stat().st_size for f in build_dir.iterdir()) / 2**20, 1)
    # The code space's search structure beside the codes (the key's name predates the other structures).
    code_files = read_meta(build_dir)["spaces"]["code"]["files"]
    report["ann_mb"] = round(sum((build_dir / f).stat().st_size for f in code_files if f != "codes.npy") / 2**20, 1)


def measure_queries(report: dict, index: Index, model, collection: Collection, queries: int) -> tuple[list, list]:
    """Every space's query times on the built index, and the served code search's recall against exact
    search; returns the code queries (fresh views of the collection's images) and their exact top 10."""
    ids = np.random.default_rng(0).integers(0, len(index), queries)
    pix_q = [index.pixels[i] for i in ids]
    # fresh views of the collection's images: a database row as query would find itself trivially
    code_q = list(realistic_codes(model, collection.pixels, queries, seed=2))
    spaces = index.spaces
    found, times = timed(lambda q: spaces["pixel"].search(q, 10)[0], pix_q)
    report["pixel_p50_ms"], report["pixel_p95_ms"] = percentiles(times)
    flat = index.pixels.reshape(len(index), -1)
    agree = [list(topk_ties_by_id(squared_distances(flat, np.arange(len(flat)), q.reshape(-1)), 10)) == list(f)
             for q, f in zip(pix_q[:50], found[:50])]
    report["pixel_exact_agreement"] = float(np.mean(agree))  # pruned search vs a full integer scan, ties by id
    pca_q = [spaces["pca"].embed_many(q[None], None)[0] for q in pix_q]
    _, times = timed(lambda v: spaces["pca"].search(v, 10), pca_q)
    report["pca_p50_ms"], report["pca_p95_ms"] = percentiles(times)
    served, times = timed(lambda q: spaces["code"].search(q, 10)[0], code_q)
    report["code_p50_ms"], report["code_p95_ms"] = percentiles(times)
    exact = ExactCodeSearch(index.codes)
    truth, times = timed(lambda q: exact.search(q, 10), code_q)
    report["exact_code_p50_ms"], report["exact_code_p95_ms"] = percentiles(times)
    report["code_recall_at_10"] = round(recall_at(served, truth), 4)
    bits_q = spaces["bits"].embed_many(None, np.asarray(code_q))
    found_bits, times = timed(lambda w: spaces["bits"].search(w, 10)[0], bits_q)
    report["bits_p50_ms"], report["bits_p95_ms"] = percentiles(times)
    report["bits_recall_at_10"] = round(recall_at(found_bits, truth), 4)  # vs exact float codes: what binarising loses
    report["pixel_over_code_speedup"] = round(report["pixel_p50_ms"] / report["code_p50_ms"], 1)
    return code_q, truth


# The structures compared side by side: key -> (structure, its knob's value as a multiple of the default; None:
# the default). Annoy's default and two other search_k; faiss's lists and graph at their defaults.
STRUCTURES = {"annoy": ("annoy", None), "annoy_half": ("annoy", 0.5), "annoy_double": ("annoy", 2.0),
              "faiss": ("faiss", None), "faiss_hnsw": ("faiss_hnsw", None)}
CURVE_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)  # each structure's knob around its default, for the plot


def compare_structures(codes: np.ndarray, queries: list, truth: list, exact: dict, *,
                       curve_queries: int = 300) -> tuple[dict, dict]:
    """The code space's structures side by side over the same codes and queries: p50_ms, p95_ms,
    recall_at_10 (against exact search), build_seconds and bytes_per_item (the structure's files and the
    full codes every one re-ranks on, per item), keyed by structure ("exact", "annoy", "faiss", ...;
    another search_k of Annoy is "annoy_search_k_<value>"). And per structure, its recall/latency curve
    over its knob (the first `curve_queries` queries)."""
    table = {"exact": {**exact, "recall_at_10": 1.0, "build_seconds": 0.0, "bytes_per_item": 4 * codes.shape[1]}}
    curves = {}
    for name in dict.fromkeys(structure for structure, _ in STRUCTURES.values()):
        t = time.perf_counter()
        built = served_code_search(codes, structure=name)
        seconds = round(time.perf_counter() - t, 2)
        folder = Path(built.folder.name)  # the structure's files (the codes stay in memory: counted apart)
        size = codes.nbytes + sum((folder / f).stat().st_size for f in built.section["files"] if f != "codes.npy")
        knob = built.knob
        default = built.section["settings"][knob]
        for key, (structure, factor) in STRUCTURES.items():
            if structure != name:
                continue
            value = default if factor is None else max(1, int(default * factor))
            found, times = timed(lambda q: built.search(q, 10, **{knob: value})[0], queries)
            key = key if factor is None else f"{name}_{knob}_{value}"
            p50, p95 = percentiles(times)
            table[key] = {"p50_ms": p50, "p95_ms": p95, "recall_at_10": round(recall_at(found, truth), 4),
                          "build_seconds": seconds, "bytes_per_item": round(size / len(codes), 1), knob: value}
        curves[name] = []
        for factor in CURVE_FACTORS:
            value = max(1, int(default * factor))
            found, times = timed(lambda q: built.search(q, 10, **{knob: value})[0], queries[:curve_queries])
            curves[name].append({knob: value, "p50_ms": percentiles(times)[0],
                                 "recall_at_10": round(recall_at(found, truth[:curve_queries]), 4)})
        del built
    return table, curves


def measure_scale(model, collection: Collection, work: Path, items: int, queries: int, n_trees: int,
                  search_ks) -> dict:
    """A million realistic codes: an on-disk Annoy index memory-mapped for search, the structures side by
    side, and the bits' exact Hamming search."""
    codes = realistic_codes(model, collection.pixels, items)
    t = time.perf_counter()
    space = annoy_code_search(codes, n_trees=n_trees, path=work / "scale.ann", n_jobs=-1)  # on disk: mmapped
    scale_build = time.perf_counter() - t
    fresh = list(realistic_codes(model, collection.pixels, queries, seed=1))  # new views, not database rows
    exact = ExactCodeSearch(codes)
    truth, ex_times = timed(lambda q: exact.search(q, 10), fresh)
    exact = None  # free the 1 GB reference matrix before searching Annoy
    rows = []
    for sk in search_ks:
        found, an_times = timed(lambda q: space.search(q, 10, search_k=sk)[0], fresh)
        rows.append({"search_k": sk, "recall_at_10": round(recall_at(found, truth), 4),
                     "p50_ms": percentiles(an_times)[0]})
    space.ann.unload()
    ex_p50, ex_p95 = percentiles(ex_times)
    structures, curves = compare_structures(codes, fresh, truth, {"p50_ms": ex_p50, "p95_ms": ex_p95},
                                            curve_queries=queries)
    # bits at scale: exact Hamming search; its recall is against the float codes' exact top-10,
    # so it measures what binarising loses (the Hamming search itself is exact)
    mean, projection = fit_binariser(codes, min(256, codes.shape[1] // 64 * 64), seed=0)
    scan, fresh_words = HammingScan(word_major(binarise(codes, mean, projection))), binarise(np.asarray(fresh), mean,
                                                                                            projection)
    bits_found, bits_times = timed(lambda w: scan.search(w, 10)[0], fresh_words)  # as the space searches
    by_level = hamming_by_simd_level(scan, fresh_words)
    good = [r for r in rows if r["recall_at_10"] >= 0.95]
    chosen = min(good, key=lambda r: r["p50_ms"]) if good else rows[-1]
    return {"items": items, "build_seconds": round(scale_build, 2),
            "index_mb": round((work / "scale.ann").stat().st_size / 2**20, 1), "n_trees": n_trees,
            "search_k": chosen["search_k"], "annoy_p50_ms": chosen["p50_ms"], "exact_p50_ms": ex_p50,
            "recall_at_10": chosen["recall_at_10"], "speedup": round(ex_p50 / chosen["p50_ms"], 1),
            "memory_mapped": True, "bits_p50_ms": percentiles(bits_times)[0],
            "bits_recall_at_10": round(recall_at(bits_found, truth), 4),  # vs exact float-code search
            "bits_p50_ms_by_simd_level": by_level, "sweep": rows,
            "code_structures": structures, "code_structure_curves": curves}


def hamming_by_simd_level(scan: HammingScan, queries: np.ndarray) -> dict[str, float]:
    """The Hamming search's p50 at each SIMD level faiss can run on this CPU, none included: a
    speed that held only for the kernel one machine picks would not be a result."""
    import faiss
    if not hasattr(faiss, "SIMDConfig"):  # faiss before 1.12 picks one level at import
        return {}
    chosen, p50 = faiss.SIMDConfig.get_level(), {}
    try:
        for name in ("NONE", "AVX2", "AVX512", "AVX512_VPOPCNT", "AVX512_SPR", "ARM_NEON", "ARM_SVE"):
            level = getattr(faiss, f"SIMDLevel_{name}", None)
            if level is not None and faiss.SIMDConfig.is_simd_level_available(level):
                faiss.SIMDConfig.set_level(level)
                p50[name.lower()] = percentiles(timed(lambda w: scan.search(w, 10)[0], queries)[1])[0]
    finally:
        faiss.SIMDConfig.set_level(chosen)
    return p50


def print_report(r: dict) -> None:
    """The benchmark's figures as a short table on stdout."""
    if "items" in r:
        print_collection_report(r)
    if "million" in r:
        m = defaultdict(lambda: float("nan"), r["million"])  # a phase not measured yet prints as nan
        print(f"million: {m['indexed']:,} JPEGs built in {m['build_seconds']:.0f} s = {m['build_images_per_s']:,} images/s, "
              f"peak RSS {m['build_peak_rss_mb']:,} MB; killed at half and resumed: {m['resume_overhead']:.2f}x a clean "
              f"build; --update with {m['update_added'] + m['update_changed']:,} new or changed files: {m['update_seconds']:.0f} s; load {m['load_seconds']:.1f} s")
        print(f"  at {m['indexed']:,} items p50: pixel {m['pixel_p50_ms']:.1f} ms, code {m['code_p50_ms']:.2f} ms "
              f"(recall@10 {m['code_recall_at_10']:.3f}), bits {m['bits_p50_ms']:.2f} ms, "
              f"pca {m['pca_p50_ms']:.1f} ms; a page query {m['query_server_ms']:.0f} ms "
              f"({m['query_all_spaces_ms']:.0f} ms with every space)")
        print(f"  near-duplicates over all {m['duplicates_items']:,} items ({m['duplicates_space']} space): "
              f"{m['duplicates_seconds']:.0f} s, peak RSS {m['duplicates_peak_rss_mb']:,} MB, "
              f"{m['duplicates_groups']:,} groups of {m['duplicates_pairs']:,} pairs")


def print_collection_report(r: dict) -> None:
    print(f"\n{r['items']:,} images from {r['collection']}, model {r['model']}, {r['threads']} torch threads")
    print(f"encoding                  {r['encode_images_per_s']:>10,.0f} images/s; one upload "
          f"p50 {r['upload_encode_p50_ms']:.1f} ms")
    print(f"index build               {r['build_seconds']:>10.1f} s, {r['index_mb']:.0f} MB on disk "
          f"(code search structure {r['ann_mb']:.0f} MB); process RSS {r['rss_mb']:.0f} MB")
    print(f"{'query, k=10':<25} {'p50 ms':>10} {'p95 ms':>8}")
    for name, key in (("pixel space, exact", "pixel"), ("PCA space, exact", "pca"), ("code space, as served", "code"),
                      ("code space, exact", "exact_code"), ("bits space, Hamming", "bits")):
        print(f"{name:<25} {r[key + '_p50_ms']:>10.2f} {r[key + '_p95_ms']:>8.2f}")
    print(f"served recall@10 vs exact {r['code_recall_at_10']:>10.3f}; pixel/code speed ratio "
          f"{r['pixel_over_code_speedup']:.0f}x")
    print_structures(r["code_structures"])
    print(f"numpy BLAS: {r['blas']}")
    if "scale" not in r:
        return
    s = r["scale"]
    print(f"scale: {s['items']:,} codes  build {s['build_seconds']:.0f} s ({s['n_trees']} trees), "
          f"{s['index_mb']:.0f} MB (mmap); search_k {s['search_k']}: Annoy p50 {s['annoy_p50_ms']:.2f} ms vs exact "
          f"{s['exact_p50_ms']:.1f} ms ({s['speedup']:.0f}x), recall@10 {s['recall_at_10']:.3f}; "
          f"bits p50 {s['bits_p50_ms']:.2f} ms (exact Hamming)")
    print_structures(s["code_structures"])
    for row in s["sweep"]:
        print(f"  scale search_k {row['search_k']:>6}: recall@10 {row['recall_at_10']:.3f}, p50 {row['p50_ms']:.2f} ms")
    print("\nsweep (n_trees, search_k): recall@10, p50 ms")
    for row in r["sweep"]:
        print(f"  {row['n_trees']:>3} {row['search_k']:>6}: {row['recall_at_10']:.3f}  {row['p50_ms']:.3f}")


def print_structures(table: dict) -> None:
    print(f"{'code structure':<26} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10} {'build s':>8} {'bytes/item':>11}")
    for name, r in table.items():
        print(f"{name:<26} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} {r['recall_at_10']:>10.4f} "
              f"{r['build_seconds']:>8.1f} {r['bytes_per_item']:>11,.0f}")


def plot_structures(report: dict, path) -> None:
    """Recall@10 against p50 query time of each code space structure over its knob, exact search a point."""
    fig, ax = new_figure()
    for name, rows in report["code_structure_curves"].items():
        knob = next(k for k in rows[0] if k not in ("p50_ms", "recall_at_10"))
        ax.plot([r["p50_ms"] for r in rows], [r["recall_at_10"] for r in rows], marker="o", label=f"{name} ({knob})")
        for r in rows:
            ax.annotate(f"{r[knob]:,}", (r["p50_ms"], r["recall_at_10"]), fontsize=7, alpha=0.7)
    exact = report["code_structures"]["exact"]
    ax.plot([exact["p50_ms"]], [1.0], marker="*", markersize=12, linestyle="none", color="black", label="exact")
    ax.axhline(0.98, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set(xlabel="query time, p50 (ms, log scale), the exact re-rank included", ylabel="recall@10 vs exact search",
           title=f"The code space's structures on {report['items']:,} codes (labels: the knob's value)")
    save_figure(fig, ax, path)
