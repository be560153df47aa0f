"""Measure speed and scale: python scripts/benchmark.py [--data cifar10|FOLDER] [--json FILE] [--plot PNG]

Encoding throughput, upload latency, index build time and size, pixel/code query latency
(p50/p95 over --queries queries, k=10), Annoy recall@10 against exact search, resident memory,
a sweep of Annoy settings, and a --scale-items run (default 1,000,000) on realistic codes.
"""
import argparse
import sys
from pathlib import Path

import _path  # noqa: F401
from imgsearch.report import write_outputs
from imgsearch.benchmark import plot_sweep, run_benchmark
from imgsearch.data import CollectionError, load_collection
from imgsearch.index import DEFAULT_CHECKPOINT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", help="collection to index (default: cifar10 = the train split)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--queries", type=int, default=1000, help="single queries timed per space (default: 1000)")
    p.add_argument("--scale-items", type=int, default=1_000_000, help="codes in the scale run (default: 1,000,000)")
    p.add_argument("--quick", action="store_true", help="small everything: checks the figures, not the speed")
    p.add_argument("--work-dir", help="where the benchmark's indexes are written (default: a temporary folder)")
    p.add_argument("--json", help="write the report to this JSON file")
    p.add_argument("--plot", help="write the recall-vs-latency plot to this PNG")
    a = p.parse_args(argv)
    try:
        collection = load_collection(a.data)
    except CollectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kw = {}
    if a.quick:
        kw = dict(queries=min(a.queries, 50), scale_items=min(a.scale_items, 5000), scale_queries=20,
                  sweep_queries=20, sweep_trees=(2, 4), sweep_search_ks=(100, 1000),
                  scale_trees=4, scale_search_ks=(100, 1000))
    else:
        kw = dict(queries=a.queries, scale_items=a.scale_items)
    r = run_benchmark(collection, a.model, work_dir=Path(a.work_dir) if a.work_dir else None, **kw)

    s = r["scale"]
    print(f"\n{r['items']:,} images from {r['collection']}, model {r['model']}, {r['threads']} torch threads")
    print(f"encoding                  {r['encode_images_per_s']:>10,.0f} images/s; one upload "
          f"p50 {r['upload_encode_p50_ms']:.1f} ms")
    print(f"index build               {r['build_seconds']:>10.1f} s, {r['index_mb']:.0f} MB on disk "
          f"(Annoy {r['ann_mb']:.0f} MB); process RSS {r['rss_mb']:.0f} MB")
    print(f"{'query, k=10':<25} {'p50 ms':>10} {'p95 ms':>8}")
    for name, key in (("pixel space, exact", "pixel"), ("code space, Annoy", "code"), ("code space, exact", "exact_code")):
        print(f"{name:<25} {r[key + '_p50_ms']:>10.2f} {r[key + '_p95_ms']:>8.2f}")
    print(f"Annoy recall@10 vs exact  {r['code_recall_at_10']:>10.3f}; pixel/code speed ratio "
          f"{r['pixel_over_code_speedup']:.0f}x")
    print(f"scale: {s['items']:,} codes  build {s['build_seconds']:.0f} s ({s['n_trees']} trees), "
          f"{s['index_mb']:.0f} MB (mmap); search_k {s['search_k']}: Annoy p50 {s['annoy_p50_ms']:.2f} ms vs exact "
          f"{s['exact_p50_ms']:.1f} ms ({s['speedup']:.0f}x), recall@10 {s['recall_at_10']:.3f}")
    for row in s["sweep"]:
        print(f"  scale search_k {row['search_k']:>6}: recall@10 {row['recall_at_10']:.3f}, p50 {row['p50_ms']:.2f} ms")
    print("\nsweep (n_trees, search_k): recall@10, p50 ms")
    for row in r["sweep"]:
        print(f"  {row['n_trees']:>3} {row['search_k']:>6}: {row['recall_at_10']:.3f}  {row['p50_ms']:.3f}")
    write_outputs(r, a.json, a.plot, plot_sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
