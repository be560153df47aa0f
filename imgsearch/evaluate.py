"""Retrieval quality: does code search find images of the query's class more often than pixels or PCA?

Standard protocol: every query image searches the database; a result is relevant when it has
the query's class. Figures: P@k (fraction of the top k that are relevant) and mAP@1000
(average precision over each query's top 1,000, normalised by the relevant items found in
them, then the mean over queries: the definition in ../shared/datasets/README.md).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from .data import Collection
from .index import METRIC, N_TREES, SEARCH_K, SEED, build_annoy
from .model import encode_pixels
from .report import new_figure, save_figure
from .train import reconstruction_mse

KS = (1, 10, 100)
MAP_DEPTH = 1000
PCA_COMPONENTS = 256  # the same length as the code: the linear auto-encoder it is measured against


# ---- metrics -------------------------------------------------------------------------------

def relevance(retrieved: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """(Q, K) retrieved ids -> (Q, K) bool: does each result share its query's class?"""
    return db_labels[retrieved] == query_labels[:, None]


def precision_at(rel: np.ndarray, k: int) -> float:
    return float(rel[:, :k].mean())


def average_precision(rel: np.ndarray) -> np.ndarray:
    """(Q, K) relevance -> (Q,) AP over the K results, normalised by the relevant ones among them."""
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    found = rel.sum(axis=1)
    return np.where(found > 0, (prec * rel).sum(axis=1) / np.maximum(found, 1), 0.0)


def precision_curve(rel: np.ndarray, max_k: int = 100) -> list[float]:
    """Mean P@k for k = 1..max_k (fewer when fewer results were retrieved)."""
    max_k = min(max_k, rel.shape[1])
    return (np.cumsum(rel[:, :max_k], axis=1).mean(axis=0) / np.arange(1, max_k + 1)).tolist()


def figures(rel: np.ndarray) -> dict:
    out = {f"P@{k}": round(precision_at(rel, k), 4) for k in KS}
    out[f"mAP@{MAP_DEPTH}"] = round(float(average_precision(rel[:, :MAP_DEPTH]).mean()), 4)
    return out


# ---- search --------------------------------------------------------------------------------

def exact_knn(db: np.ndarray, queries: np.ndarray, k: int, metric: str = "euclidean",
              desc: str = "searching", chunk: int = 500) -> np.ndarray:
    """Exact top-k ids (Q, k) by brute force, in query chunks so memory stays bounded."""
    d = torch.from_numpy(np.ascontiguousarray(db, dtype=np.float32))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    if metric == "angular":
        d, q_all = torch.nn.functional.normalize(d, dim=1), torch.nn.functional.normalize(q_all, dim=1)
    sq = (d * d).sum(1)
    out = np.empty((len(q_all), k), dtype=np.int64)
    for s in tqdm(range(0, len(q_all), chunk), desc=desc, unit="chunk", mininterval=1.0):
        q = q_all[s:s + chunk]
        score = sq[None, :] - 2.0 * q @ d.T  # ||q - x||^2 up to a per-query constant
        out[s:s + len(q)] = torch.topk(score, k, dim=1, largest=False, sorted=True).indices.numpy()
    return out


def annoy_knn(db_codes: np.ndarray, query_codes: np.ndarray, k: int, *, n_trees: int = N_TREES,
              search_k: int = SEARCH_K, seed: int = SEED) -> np.ndarray:
    """Top-k ids through Annoy with the settings the app serves."""
    ann = build_annoy(db_codes, n_trees, seed=seed)
    out = np.full((len(query_codes), k), -1, dtype=np.int64)

    def one(i):
        ids = ann.get_nns_by_vector(query_codes[i], k, search_k=max(search_k, k))
        out[i, :len(ids)] = ids

    with ThreadPoolExecutor(max_workers=2) as pool:  # Annoy releases the GIL while searching
        list(tqdm(pool.map(one, range(len(query_codes))), total=len(query_codes), desc="annoy", mininterval=1.0))
    return out


def fit_pca(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (D, n)) from the covariance's eigenvectors."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    mean = xt.mean(0)
    cov = torch.zeros(xt.shape[1], xt.shape[1], dtype=torch.float64)
    for s in range(0, len(xt), 5000):
        c = (xt[s:s + 5000] - mean).double()
        cov += c.T @ c
    vals, vecs = torch.linalg.eigh(cov / len(xt))
    comps = vecs[:, torch.argsort(vals, descending=True)[:n]].float()
    return mean.numpy(), comps.numpy()


def pca_project(x: np.ndarray, mean: np.ndarray, comps: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) - mean) @ comps


# ---- the whole evaluation ------------------------------------------------------------------

class EvaluationError(ValueError):
    """Collections that cannot be evaluated against each other."""


def align_labels(database: Collection, queries: Collection) -> np.ndarray:
    """Query labels as indices into the database's classes (class names decide, not numbers)."""
    if not database.has_labels or not queries.has_labels:
        raise EvaluationError("Both collections need class labels (class subfolders, or CIFAR-10) to measure retrieval.")
    index = {c: i for i, c in enumerate(database.classes)}
    return np.array([index.get(queries.classes[l], -2) if l >= 0 else -3 for l in queries.labels])


def evaluate(database: Collection, queries: Collection, model, *, max_k: int = MAP_DEPTH,
             n_trees: int = N_TREES, search_k: int = SEARCH_K) -> dict:
    """Every representation's figures, precision curves and the model's reconstruction error."""
    q_labels = align_labels(database, queries)
    db_labels = database.labels
    depth = min(max_k, len(database))
    seconds = {}
    results, curves, retrieved = {}, {}, {}

    def record(name, ids, t0):
        rel = relevance(ids, db_labels, q_labels)
        results[name] = figures(rel)
        curves[name] = precision_curve(rel)
        retrieved[name] = ids[:, :10]
        seconds[name] = round(time.time() - t0, 1)

    flat_db = database.pixels.reshape(len(database), -1).astype(np.float32) / 255.0
    flat_q = queries.pixels.reshape(len(queries), -1).astype(np.float32) / 255.0
    t0 = time.time()
    record("pixels", exact_knn(flat_db, flat_q, depth, desc="pixels"), t0)

    t0 = time.time()
    mean, comps = fit_pca(flat_db, min(PCA_COMPONENTS, flat_db.shape[1], len(flat_db)))
    record("pca", exact_knn(pca_project(flat_db, mean, comps), pca_project(flat_q, mean, comps), depth, desc="pca"), t0)
    del flat_db, flat_q

    t0 = time.time()
    db_codes = encode_pixels(model, database.pixels, progress=True)
    q_codes = encode_pixels(model, queries.pixels)
    record("codes_exact", exact_knn(db_codes, q_codes, depth, metric=METRIC, desc="codes"), t0)
    t0 = time.time()
    record("codes_served", annoy_knn(db_codes, q_codes, depth, n_trees=n_trees, search_k=search_k), t0)

    return {
        **results,
        "reconstruction_mse": round(reconstruction_mse(model, queries.pixels), 5),
        "precision_curves": curves,
        "seconds": seconds,
        "settings": {"database": database.spec, "queries": queries.spec, "database_items": len(database),
                     "query_items": len(queries), "pca_components": int(comps.shape[1]), "metric": METRIC,
                     "n_trees": n_trees, "search_k": search_k},
        "_retrieved": retrieved,  # top-10 ids per query; the quality view shows examples from them
        "_query_labels": q_labels,
    }


def plot_curves(report: dict, path) -> None:
    """Precision at k = 1..100 for every representation, as a PNG."""
    fig, ax = new_figure()
    names = {"pixels": "raw pixels", "pca": f"PCA-{report['settings']['pca_components']}",
             "codes_exact": "auto-encoder codes (exact)", "codes_served": "codes as served (Annoy)"}
    for key, label in names.items():
        curve = report["precision_curves"][key]
        ax.plot(range(1, len(curve) + 1), curve, label=label, linestyle="--" if key == "codes_served" else "-")
    s = report["settings"]
    ax.set(xlabel="k", ylabel="precision at k", xscale="log",
           title=f"{s['query_items']:,} queries vs {s['database_items']:,} database images")
    save_figure(fig, ax, path)
