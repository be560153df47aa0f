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
from tqdm import tqdm

from .data import Collection
from .knn import BruteForce
from .model import encode_pixels
from .report import new_figure, save_figure
from .spaces.base import PCA_FIT_ROWS, BuildInput
from .spaces.bits import WIDTHS, HammingScan, binarise, fit_binariser, word_major
from .spaces.annoy_index import N_TREES
from .spaces.backends import CODE_INDEX
from .spaces.code import served_code_search
from .spaces.faiss_index import PROBES
from .spaces.vectors import METRIC, SEED
from .train import reconstruction_mse

KS = (1, 10, 100)
MAP_DEPTH = 1000
# Every representation evaluate() reports, as the JSON keys and the plots name them
REPRESENTATIONS = {"pixels": "raw pixels", "pca": "PCA-256", "codes_exact": "codes, exact",
                   "codes_served": "codes, as served", **{f"bits_{b}": f"{b} bits (Hamming)" for b in WIDTHS},
                   "bits_256_sign": "256 bits, plain sign"}
# The representations whose P@10 per class is printed and drawn: the baselines, the code as served, its bits
PER_CLASS_SHOWN = ("pixels", "pca", "codes_served", "bits_256")


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


def per_class_precision(rel: np.ndarray, query_labels: np.ndarray, classes: list[str], k: int = 10) -> dict[str, float]:
    """P@k of each class's queries: where a representation finds the class and where it confuses it."""
    return {c: round(precision_at(rel[query_labels == i], k), 4) for i, c in enumerate(classes)
            if (query_labels == i).any()}


def figures(rel: np.ndarray) -> dict:
    out = {f"P@{k}": round(precision_at(rel, k), 4) for k in KS}
    out[f"mAP@{MAP_DEPTH}"] = round(float(average_precision(rel[:, :MAP_DEPTH]).mean()), 4)
    return out


# ---- search --------------------------------------------------------------------------------

def exact_knn(db: np.ndarray, queries: np.ndarray, k: int, metric: str = "euclidean", desc: str = "searching") -> np.ndarray:
    """Exact top-k ids (Q, k) by brute force, with a progress bar."""
    return BruteForce(db, metric).search(queries, k, progress=lambda it: tqdm(it, desc=desc, unit="chunk", mininterval=1.0))[0]


def served_knn(db_codes: np.ndarray, query_codes: np.ndarray, k: int, *, code_index: str = CODE_INDEX,
               n_trees: int = N_TREES, search_k: int | None = None, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """Top-k ids as the code space serves them (its structure, then the exact re-rank), and its settings."""
    space = served_code_search(db_codes, structure=code_index, seed=seed, n_trees=n_trees, search_k=search_k,
                               probes=PROBES)
    out = np.full((len(query_codes), k), -1, dtype=np.int64)

    def one(i):
        ids = space.search(query_codes[i], k)[0]
        out[i, :len(ids)] = ids

    with ThreadPoolExecutor(max_workers=2) as pool:  # Annoy, faiss and numpy release the GIL while searching
        list(tqdm(pool.map(one, range(len(query_codes))), total=len(query_codes), desc="served", mininterval=1.0))
    return out, space.section["settings"]


def hamming_knn(db_codes: np.ndarray, query_codes: np.ndarray, k: int, bits: int, *, method: str = "itq",
                seed: int = SEED) -> np.ndarray:
    """Top-k ids by exact Hamming distance between binary codes made as the bits space makes them."""
    mean, projection = fit_binariser(db_codes, bits, method=method, seed=seed)
    scan = HammingScan(word_major(binarise(db_codes, mean, projection)))
    q, batch = binarise(query_codes, mean, projection), 500  # batches only for the progress bar
    starts = tqdm(range(0, len(q), batch), desc=f"bits {bits} ({method})", unit=f"{batch} queries", mininterval=1.0)
    return np.concatenate([scan.search(q[s:s + batch], k)[0] for s in starts])  # ties to the smaller id


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
             code_index: str = CODE_INDEX, n_trees: int = N_TREES, search_k: int | None = None,
             seed: int = SEED) -> dict:
    """Every representation's figures, precision curves, bytes per item and the model's reconstruction error.

    The pca and bits representations are fitted exactly as an index build fits its spaces.
    """
    q_labels = align_labels(database, queries)
    db_labels = database.labels
    depth = min(max_k, len(database))
    seconds, results, curves, retrieved, per_class = {}, {}, {}, {}, {}

    def record(name, search):
        """Run one representation's search (timed) and score its ranked ids."""
        t0 = time.time()
        ids = search()
        rel = relevance(ids, db_labels, q_labels)
        results[name] = figures(rel)
        curves[name] = precision_curve(rel)
        per_class[name] = per_class_precision(rel, q_labels, database.classes)
        retrieved[name] = ids[:, :10]
        seconds[name] = round(time.time() - t0, 1)

    flat = lambda c: c.pixels.reshape(len(c), -1).astype(np.float32) / 255.0  # noqa: E731
    record("pixels", lambda: exact_knn(flat(database), flat(queries), depth, desc="pixels"))
    db_codes = encode_pixels(model, database.pixels, progress=True)
    q_codes = encode_pixels(model, queries.pixels)
    pca = BuildInput(database.pixels, db_codes, seed=seed).pixel_pca
    record("pca", lambda: exact_knn(pca.project(database.pixels), pca.project(queries.pixels), depth, desc="pca"))
    record("codes_exact", lambda: exact_knn(db_codes, q_codes, depth, metric=METRIC, desc="codes"))
    served, served_settings = served_knn(db_codes, q_codes, depth, code_index=code_index, n_trees=n_trees,
                                         search_k=search_k, seed=seed)
    record("codes_served", lambda: served)
    for b in [b for b in WIDTHS if b <= db_codes.shape[1]]:
        record(f"bits_{b}", lambda: hamming_knn(db_codes, q_codes, depth, b, seed=seed))
    if db_codes.shape[1] == 256:
        record("bits_256_sign", lambda: hamming_knn(db_codes, q_codes, depth, 256, method="sign"))

    settings = {"database": database.spec, "queries": queries.spec, "database_items": len(database),
                "query_items": len(queries), "pca_components": pca.n_components,
                "pca_fit_rows": min(len(database), PCA_FIT_ROWS), "metric": METRIC,
                "code_index": code_index, "bits_method": "itq",
                **{k: v for k, v in served_settings.items() if k in ("n_trees", "search_k", "probes", "lists")}}
    return {
        **results,
        "reconstruction_mse": round(reconstruction_mse(model, queries.pixels), 5),
        "bytes_per_item": bytes_per_item(results, database.pixels[0].size, pca.n_components, db_codes.shape[1]),
        "precision_curves": curves,
        "per_class_P@10": per_class,
        "seconds": seconds,
        "settings": settings,
        "_retrieved": retrieved,  # top-10 ids per query; the quality view shows examples from them
        "_query_labels": q_labels,
    }


def bytes_per_item(results: dict, pixel_bytes: int, pca_components: int, code_dim: int) -> dict:
    """What each measured representation stores per image."""
    sizes = {"pixels": pixel_bytes, "pca": 4 * pca_components, "codes_exact": 4 * code_dim,
             "codes_served": 4 * code_dim, "bits_256_sign": 32}
    sizes.update({name: int(name.split("_")[1]) // 8 for name in results
                  if name.startswith("bits_") and name.split("_")[1].isdigit() and not name.endswith("sign")})
    return {name: size for name, size in sizes.items() if name in results}


def plot_curves(report: dict, path) -> None:
    """Precision at k = 1..100 for every representation, as a PNG: codes solid, bits dashed, baselines dotted."""
    fig, ax = new_figure()
    styles = {"pixels": ("tab:grey", ":"), "pca": ("tab:brown", ":"), "codes_exact": ("tab:blue", "-"),
              "codes_served": ("tab:cyan", (0, (1, 2))), "bits_64": ("tab:olive", "--"), "bits_128": ("tab:orange", "--"),
              "bits_256": ("tab:red", "--"), "bits_256_sign": ("tab:pink", "-.")}
    for key, label in REPRESENTATIONS.items():
        if key not in report["precision_curves"]:
            continue
        curve = report["precision_curves"][key]
        colour, style = styles.get(key, (None, "-"))
        ax.plot(range(1, len(curve) + 1), curve, label=label, color=colour, linestyle=style,
                linewidth=2.4 if key == "codes_served" else 1.6)
    s = report["settings"]
    ax.set(xlabel="k", ylabel="precision at k", xscale="log",
           title=f"{s['query_items']:,} queries vs {s['database_items']:,} database images")
    save_figure(fig, ax, path)
