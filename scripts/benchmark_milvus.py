"""Milvus beside Annoy and the local bits: build time, latency and recall on a built index (docs/scale.md).

    .venv/bin/python scripts/benchmark_milvus.py --index data/index --json docs/scale.json
    .venv/bin/python scripts/benchmark_milvus.py --ray-images 10000 --json docs/scale_ray.json

Reads the index's codes (the live Annoy-backed build is not touched), writes the code and bits
spaces into Milvus collections (a Milvus standalone server: the embedded `milvus` package started
on a free port, or --uri; and a Milvus Lite file), and times single queries, k = 10, in each.
Queries are codes of freshly augmented views of the collection's images, as in imgsearch benchmark.
`--ray-images N` instead times the decode-and-encode stage of a build of N images of the offline
copy, plain and on a local Ray, and checks that the codes agree.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from milvus_server import start_server  # scripts/ is on the path when this file runs

from imgsearch.benchmark import ExactCodeSearch, percentiles, realistic_codes, recall_at, timed
from imgsearch.index import build_index
from imgsearch.publish import DEFAULT_INDEX, resolve
from imgsearch.report import write_json
from imgsearch.search import Index
from imgsearch.spaces import BuildInput, LoadInput
from imgsearch.spaces.bits import BitsSpace
from imgsearch.spaces.code import CodeSpace
from imgsearch.spaces.milvus import connect

EFS = (16, 32, 64, 128)  # HNSW candidates per query: the recall/latency trade-off
LITE_QUERIES = 100  # Milvus Lite scans in Python, ~0.2 s a query at 50,000: fewer queries suffice
OFFLINE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cifar10-jpg" / "train"


def timed_server(base: Path):
    t = time.time()
    server, uri = start_server(base)
    return server, uri, round(time.time() - t, 1)


def in_milvus(space_cls, shared: BuildInput, work: Path, uri: str, **options):
    """Build one space into Milvus (timed) and load it back as Index.load would."""
    t = time.time()
    section = space_cls.build(shared, work, backend="milvus", uri=uri, **options)
    seconds = round(time.time() - t, 1)
    loaded = space_cls.load(LoadInput(work, len(shared.codes), shared.pixels, shared.codes), section)
    return loaded, section, seconds


def latency(space, vectors, k: int = 10) -> tuple[list, dict]:
    found, times = timed(lambda v: space.search(v, k), vectors)
    p50, p95 = percentiles(times)
    return found, {"p50_ms": p50, "p95_ms": p95, "queries": len(vectors)}


def milvus_benchmark(index_dir: Path, n_queries: int, uri: str | None) -> dict:
    index = Index.load(index_dir)
    codes, pixels = np.asarray(index.codes), index.pixels
    queries = realistic_codes(index.model, pixels, n_queries, seed=1)
    exact = ExactCodeSearch(codes)
    truth = [exact.search(q, 10) for q in queries]
    report = {"items": len(codes), "queries": n_queries, "index": str(resolve(index_dir)),
              "cores": os.cpu_count(), "k": 10}

    found, report["annoy"] = latency(index.spaces["code"], queries)
    report["annoy"]["recall_at_10"] = round(recall_at([f[0] for f in found], truth), 4)
    code_settings = index.meta["spaces"]["code"]["settings"]  # the local code space: Annoy's trees, or faiss's
    report["annoy"]["settings"] = {k: code_settings[k] for k in ("structure", "lists", "probes", "n_trees", "search_k")
                                   if k in code_settings}
    local_bits = index.spaces["bits"]
    bit_queries = local_bits.embed_many(None, queries)
    bits_local_found, report["bits_local"] = latency(local_bits, bit_queries)

    work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    server = None
    try:
        if uri is None:
            server, uri, report["server_start_seconds"] = timed_server(work / "server")
        report["server"] = uri if server is None else "embedded Milvus 2.3.5 standalone (pip package milvus), 127.0.0.1"
        shared = BuildInput(pixels, codes, seed=index.meta["seed"])
        build = work / "20000101-000000-bench"
        build.mkdir()
        code, section, seconds = in_milvus(CodeSpace, shared, build, uri)
        report["milvus_code"] = {"build_seconds": seconds, "index": section["settings"]["index_type"],
                                 "index_params": section["settings"]["index_params"], "sweep": []}
        for ef in EFS:
            code.structure.params["params"]["ef"] = ef  # the Milvus collection the space searches
            found, row = latency(code, queries)
            row.update(ef=ef, recall_at_10=round(recall_at([f[0] for f in found], truth), 4))
            report["milvus_code"]["sweep"].append(row)
        bits, section, seconds = in_milvus(BitsSpace, shared, build, uri, bits=local_bits.bits)
        found, row = latency(bits, bit_queries)
        same_d = [np.array_equal(f[1], g[1]) for f, g in zip(found, bits_local_found)]
        same_ids = [np.array_equal(f[0][f[1] < f[1][-1]], g[0][g[1] < g[1][-1]]) for f, g in zip(found, bits_local_found)]
        report["milvus_bits"] = {**row, "build_seconds": seconds, "index": section["settings"]["index_type"],
                                 "distances_equal_to_local": float(np.mean(same_d)),
                                 "ids_equal_to_local_except_ties_at_10th": float(np.mean(same_ids))}
        client = connect(uri)
        for store in (code.structure, bits.scan):
            client.drop_collection(store.collection)

        lite = work / "lite"
        lite.mkdir()
        lite_build = lite / "20000101-000000-lite"
        lite_build.mkdir()
        code, section, seconds = in_milvus(CodeSpace, shared, lite_build, str(lite / "vectors.db"))
        found, row = latency(code, queries[:LITE_QUERIES])
        row.update(build_seconds=seconds, index=section["settings"]["index_type"],
                   recall_at_10=round(recall_at([f[0] for f in found], truth[:LITE_QUERIES]), 4))
        report["milvus_lite_code"] = row
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report


def ray_benchmark(n_images: int, model: Path) -> dict:
    """A build's decode-and-encode stage for n_images of the offline copy: plain, then on a local Ray."""
    from imgsearch.ray_pipeline import connect, ray_batches

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        folder = work / "images"
        classes = sorted(p for p in OFFLINE.iterdir() if p.is_dir())
        for cls in classes:
            (folder / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n_images // len(classes)]:
                (folder / cls.name / f.name).symlink_to(f)
        report = {"images": n_images, "cores": os.cpu_count()}
        for name, batches in (("plain", None), ("ray_local", ray_batches())):
            if batches:  # Ray's own start-up, timed apart: a cluster pays it once, not per build
                t = time.time()
                connect()
                report["ray_start_seconds"] = round(time.time() - t, 1)
            t = time.time()
            build_index(str(folder), model, work / name, spaces=["code"], maps=False, progress=False,
                        batches=batches)
            meta = json.loads((resolve(work / name) / "meta.json").read_text())
            report[name] = {"build_seconds": round(time.time() - t, 1), "ingest_seconds": meta["ingest"]["seconds"],
                            "space_seconds": meta["space_seconds"]}
        import ray
        ray.shutdown()
        a, b = (np.load(resolve(work / n) / "codes.npy") for n in ("plain", "ray_local"))
        # An actor given one CPU runs torch on one thread: other summation orders, the same codes to float precision.
        report["codes_equal"] = bool(np.array_equal(a, b))
        report["codes_max_abs_difference"] = float(np.abs(a - b).max())
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default=str(DEFAULT_INDEX), help="a built (Annoy-backed) index to read the codes of")
    p.add_argument("--uri", help="a running Milvus server (default: start the embedded one on a free port)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ray-images", type=int, default=0, help="time the Ray pipeline on this many images instead")
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "models" / "cifar10-ae.pt"))
    p.add_argument("--json", help="write the figures to this file")
    a = p.parse_args(argv)
    report = ray_benchmark(a.ray_images, Path(a.model)) if a.ray_images else milvus_benchmark(Path(a.index), a.queries, a.uri)
    print(json.dumps(report, indent=1))
    if a.json:
        write_json(a.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
