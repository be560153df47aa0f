"""Measure retrieval quality: python scripts/evaluate.py [--database D] [--queries Q] [--json FILE]

Queries search the database; a result is relevant when it has the query's class. Prints
P@1, P@10, P@100 and mAP@1000 for raw pixels, PCA-256, the codes (exact) and the codes as
served (Annoy), plus the auto-encoder's reconstruction MSE on the queries.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import _path  # noqa: F401
from imgsearch.report import write_outputs
from imgsearch.data import CollectionError, load_collection
from imgsearch.evaluate import EvaluationError, evaluate, plot_curves
from imgsearch.index import DEFAULT_CHECKPOINT, N_TREES, SEARCH_K
from imgsearch.model import CheckpointError, load_checkpoint

NAMES = {"pixels": "raw pixels", "pca": "PCA", "codes_exact": "codes, exact", "codes_served": "codes, as served"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database", default="cifar10", help="collection searched (default: cifar10 = the train split)")
    p.add_argument("--queries", default="cifar10:test", help="query collection (default: cifar10:test)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="checkpoint (default: the shipped one)")
    p.add_argument("--limit-queries", type=int, default=0, help="use a random subset of N queries (quick run)")
    p.add_argument("--n-trees", type=int, default=N_TREES)
    p.add_argument("--search-k", type=int, default=SEARCH_K)
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plot", help="write the precision-at-k plot to this PNG")
    p.add_argument("--examples", help="write each query's top-10 ids per representation to this .npz "
                                      "(the app's quality view reads it)")
    a = p.parse_args(argv)
    try:
        model, info = load_checkpoint(a.model)
        database = load_collection(a.database)
        queries = load_collection(a.queries)
    except (CollectionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.limit_queries:
        queries = queries.subset(a.limit_queries)
    try:
        report = evaluate(database, queries, model, n_trees=a.n_trees, search_k=a.search_k)
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report["settings"]["model"] = info["fingerprint"]

    print(f"\n{len(queries):,} queries ({queries.spec}) against {len(database):,} images ({database.spec}); "
          f"model {info['fingerprint']}")
    print(f"{'representation':<18} {'P@1':>7} {'P@10':>7} {'P@100':>7} {'mAP@1000':>9}")
    for key, name in NAMES.items():
        r = report[key]
        print(f"{name:<18} {r['P@1']:>7.3f} {r['P@10']:>7.3f} {r['P@100']:>7.3f} {r['mAP@1000']:>9.3f}")
    print(f"reconstruction MSE on the queries: {report['reconstruction_mse']:.4f}")

    if a.examples:
        Path(a.examples).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(a.examples, query_labels=report["_query_labels"],
                            query_ids=np.arange(len(queries)), **{f"top10_{k}": v for k, v in report["_retrieved"].items()})
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    write_outputs(public, a.json, a.plot, plot_curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
