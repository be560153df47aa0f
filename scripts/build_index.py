"""Rebuild the search index: python scripts/build_index.py [--data cifar10|FOLDER] [--model CKPT] [--out DIR]"""
import argparse
import sys

import _path  # noqa: F401
from imgsearch.data import CollectionError
from imgsearch.index import DEFAULT_CHECKPOINT, DEFAULT_INDEX, N_TREES, SEARCH_K, SEED, build_index
from imgsearch.model import CheckpointError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="cifar10", help="cifar10, cifar10:test, or a folder of images (default: cifar10)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="auto-encoder checkpoint (default: the shipped one)")
    p.add_argument("--out", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    p.add_argument("--n-trees", type=int, default=N_TREES, help=f"Annoy trees (default: {N_TREES})")
    p.add_argument("--search-k", type=int, default=SEARCH_K, help=f"Annoy nodes inspected per query (default: {SEARCH_K})")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--no-maps", action="store_true", help="skip the 2-D maps of the collection (saves ~10 s on 50,000 images)")
    a = p.parse_args(argv)
    try:
        summary = build_index(a.data, a.model, a.out, n_trees=a.n_trees, search_k=a.search_k, seed=a.seed,
                              maps=not a.no_maps)
    except (CollectionError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Indexed {summary['items']} images into {summary['index']} in {summary['seconds']:.1f} s.")
    if summary["skipped"]:
        print(f"Skipped {len(summary['skipped'])} unreadable or non-image files, e.g.:")
        for _, why in summary["skipped"][:5]:
            print(f"  {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
