"""Retrieval metrics on hand-computed cases, and the evaluation script end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest

from imgsearch.evaluate import (average_precision, exact_knn, figures, per_class_precision, precision_at,
                                precision_curve, relevance)

from conftest import ROOT, write_collection

pytestmark = pytest.mark.numeric  # retrieval figures computed from BLAS products


def test_relevance_compares_with_the_query_class():
    db_labels = np.array([0, 1, 1, 2])
    rel = relevance(np.array([[1, 0, 2], [3, 3, 0]]), db_labels, np.array([1, 2]))
    assert rel.tolist() == [[True, False, True], [True, True, False]]


def test_precision_at_k():
    rel = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    assert precision_at(rel, 1) == 0.5  # (1 + 0) / 2
    assert precision_at(rel, 2) == 0.25  # (1/2 + 0/2) / 2
    assert precision_at(rel, 4) == 0.375  # (2/4 + 1/4) / 2
    assert precision_curve(rel, 4) == pytest.approx([0.5, 0.25, 1 / 3, 0.375])


def test_per_class_precision_averages_each_class_queries():
    rel = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    # class "a": (1/2 + 2/2) / 2; class "b": 0/2; class "c" has no query and is left out
    assert per_class_precision(rel, np.array([0, 0, 1]), ["a", "b", "c"], k=2) == {"a": 0.75, "b": 0.0}


def test_average_precision_by_hand():
    rel = np.array([[1, 0, 1, 0],   # (1/1 + 2/3) / 2 = 5/6
                    [0, 1, 0, 0],   # (1/2) / 1
                    [0, 0, 0, 0],   # nothing relevant found: 0
                    [1, 1, 1, 1]], dtype=bool)  # 1
    assert average_precision(rel) == pytest.approx([5 / 6, 0.5, 0.0, 1.0])
    f = figures(np.tile(rel, (1, 250)))  # 1000 columns: the pattern repeats
    assert set(f) == {"P@1", "P@10", "P@100", "mAP@1000"}


def test_exact_knn_orders_by_distance():
    db = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [0.0, 2.0]])
    assert exact_knn(db, np.array([[0.9, 0.1]]), 4).tolist() == [[1, 0, 3, 2]]
    # angular: direction only, so [5, 5] is nearest to [1, 1]
    assert exact_knn(db[1:], np.array([[1.0, 1.0]]), 1, metric="angular").tolist() == [[1]]


def test_evaluate_script_end_to_end(tmp_path, checkpoint):
    db = write_collection(tmp_path / "db", per_class=12)
    queries = write_collection(tmp_path / "q", per_class=4)
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "scripts/evaluate.py", "--database", str(db), "--queries", str(queries),
                        "--model", str(checkpoint), "--json", str(out), "--plot", str(tmp_path / "p.png"),
                        "--examples", str(tmp_path / "ex.npz"), "--n-trees", "3", "--limit-queries", "9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "codes, as served" in r.stdout and "reconstruction MSE" in r.stdout
    report = json.loads(out.read_text())
    for key in ("pixels", "pca", "codes_exact", "codes_served", "bits_64"):
        assert set(report[key]) == {"P@1", "P@10", "P@100", "mAP@1000"}
        assert all(0 <= v <= 1 for v in report[key].values())
    assert "bits_128" not in report  # the tiny model's 64-d code makes at most 64 bits
    assert report["bytes_per_item"] == {"pixels": 3072, "pca": 1024, "codes_exact": 256, "codes_served": 256,
                                        "bits_64": 8}
    assert "64 bits (Hamming)" in r.stdout
    assert report["pixels"]["P@1"] == 1.0  # the generated classes are separable by colour
    assert report["per_class_P@10"]["pixels"].keys() == {"red", "green", "blue"}
    assert "P@10 per class" in r.stdout
    assert 0 < report["reconstruction_mse"] < 1 and report["settings"]["query_items"] == 9
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert np.load(tmp_path / "ex.npz")["top10_codes_exact"].shape == (9, 10)
