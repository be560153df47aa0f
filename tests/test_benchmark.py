"""The benchmark's quick mode produces every figure, and each is sane (never a timing threshold)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from imgsearch.search import Index
from test_spaces import exact_up_to_ties

from conftest import OFFLINE, ROOT, write_collection

pytestmark = pytest.mark.numeric  # recall of approximate search against BLAS-computed exact neighbours

FIGURES = ("p50_ms", "p95_ms", "recall_at_10", "build_seconds", "bytes_per_item")


def check_structures(table: dict, curves: dict, code_dim: int) -> None:
    """The side-by-side table: exact, Annoy at its default and two other search_k, faiss's lists and graph,
    each with every figure; and a recall/latency curve per structure."""
    assert set(table) >= {"exact", "annoy", "faiss", "faiss_hnsw"} and len(table) == 6
    assert sum(key.startswith("annoy_search_k_") for key in table) == 2
    for name, row in table.items():
        assert all(key in row for key in FIGURES), name
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and 0 < row["recall_at_10"] <= 1, name
        assert row["bytes_per_item"] >= 4 * code_dim, name  # every structure re-ranks on the full codes
    assert table["exact"]["recall_at_10"] == 1.0 and table["exact"]["bytes_per_item"] == 4 * code_dim
    # measured, not asserted to be positive: a small build can round to 0.00 s on a fast machine
    assert all(table[name]["build_seconds"] >= 0 for name in ("annoy", "faiss", "faiss_hnsw"))
    assert set(curves) == {"annoy", "faiss", "faiss_hnsw"} and all(len(rows) == 6 for rows in curves.values())


def test_quick_benchmark_produces_every_figure(tmp_path, checkpoint):
    data = write_collection(tmp_path / "data", per_class=30)
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--data", str(data), "--model", str(checkpoint),
                        "--quick", "--json", str(out), "--plot", str(tmp_path / "sweep.png"),
                        "--work-dir", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    for key in ("pixel_p50_ms", "pca_p50_ms", "code_p50_ms", "exact_code_p50_ms", "bits_p50_ms", "build_seconds",
                "encode_images_per_s", "upload_encode_p50_ms", "index_mb", "rss_mb"):
        assert rep[key] > 0, key
    assert rep["pixel_p95_ms"] >= rep["pixel_p50_ms"]
    assert 0.5 <= rep["code_recall_at_10"] <= 1.0
    s = rep["scale"]
    assert s["items"] == 5000 and s["build_seconds"] > 0 and s["annoy_p50_ms"] > 0 and s["exact_p50_ms"] > 0
    assert 0 < s["recall_at_10"] <= 1.0 and s["memory_mapped"] and len(s["sweep"]) == 2
    assert rep["pixel_exact_agreement"] == 1.0 and rep["map_seconds"] > 0  # the pruned search is exact
    assert s["bits_p50_ms"] > 0 and 0 < s["bits_recall_at_10"] <= 1 and 0 < rep["bits_recall_at_10"] <= 1
    assert "openblas" in rep["blas"]  # numpy's wheels bundle OpenBLAS: the report names its kernel
    assert len(rep["sweep"]) == 4 and all(0 <= row["recall_at_10"] <= 1 for row in rep["sweep"])
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert "scale: 5,000 codes" in r.stdout
    check_structures(rep["code_structures"], rep["code_structure_curves"], 64)
    check_structures(s["code_structures"], s["code_structure_curves"], 64)
    # the existing keys report the default structure, Annoy's trees
    assert rep["code_structures"]["annoy"]["search_k"] == 6000 and "faiss_hnsw" in r.stdout


def test_benchmark_without_the_scale_run_stops_after_the_queries(tmp_path, checkpoint):
    data = write_collection(tmp_path / "data", per_class=30)
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--data", str(data), "--model", str(checkpoint),
                        "--quick", "--no-scale", "--json", str(out), "--work-dir", str(tmp_path / "work")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert "scale" not in rep and "sweep" not in rep and rep["pixel_p50_ms"] > 0 and rep["bits_p50_ms"] > 0
    check_structures(rep["code_structures"], rep["code_structure_curves"], 64)


@pytest.mark.numeric
@pytest.mark.skipif(not (OFFLINE / "train").is_dir(), reason="the offline CIFAR-10 copy is not beside the repository")
def test_the_million_run_measures_its_phases_and_measures_one_again_on_request(tmp_path, checkpoint):
    """`benchmark --million` at 300 images: each chosen phase's figures, kept in the work folder, and
    `--million-phases` measuring one phase again while the others are reported as recorded."""
    def million(phases: str) -> dict:
        out = tmp_path / f"{phases}.json"
        r = subprocess.run([sys.executable, "scripts/benchmark.py", "--model", str(checkpoint),
                            "--million", str(tmp_path / "collection"), "--million-items", "300",
                            "--work-dir", str(tmp_path / "work"), "--million-phases", phases, "--json", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "million: 300 JPEGs built" in r.stdout
        return json.loads(out.read_text())["million"]

    first = million("clean,queries,update,duplicates")
    assert first["indexed"] == 300 and first["build_images_per_s"] > 0 and first["build_peak_anon_mb"] > 0
    assert first["code_p50_ms"] > 0 and 0 < first["code_recall_at_10"] <= 1 and first["load_seconds"] > 0
    assert [row["search_k"] for row in first["code_sweep"]] == [8000, 10000, 13000, 16000]  # on Annoy's trees
    assert all(0 < row["recall_at_10"] <= 1 for row in first["code_sweep"])
    # 16,000 nodes cover the 300 items' trees: the widest setting returns the exact neighbours up to ties
    index = Index.load(tmp_path / "work" / "million" / "million-index")
    for q in (0, 150, 299):
        ids, dists = index.spaces["code"].search(index.codes[q], 10, search_k=16_000)
        assert exact_up_to_ties(np.asarray(index.codes), index.codes[q], ids, dists, 10)
    assert (first["update_added"], first["update_unchanged"], first["update_items"]) == (3, 300, 303)
    # the duplicates pass runs on the updated index, in its own process, at the command's defaults
    assert first["duplicates_items"] == 303 and first["duplicates_seconds"] > 0 and first["duplicates_peak_rss_mb"] > 0
    assert first["duplicates_groups"] <= first["duplicates_pairs"] and first["duplicates_space"] in ("bits", "code", "pixel")
    assert "resume_overhead" not in first  # not asked for, never measured
    again = million("update")
    assert {k: again[k] for k in first if k.startswith(("build_", "clean_"))} == \
        {k: first[k] for k in first if k.startswith(("build_", "clean_"))}  # reported as recorded
    assert again["update_changed"] == 3 and again["update_added"] == 0  # the same files, written again
    # the resumed build is compared with a clean one, not with the index the update changed
    resumed = million("resume")
    assert resumed["resume_same_items"] and resumed["resume_same_codes"] and resumed["resumed_batches"] >= 1
    assert resumed["indexed"] == 300  # the clean build made and measured again first
