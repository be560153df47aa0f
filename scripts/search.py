"""Find an image's nearest neighbours: python scripts/search.py IMAGE [--index DIR] [-k 10] [--json]"""
import argparse
import json
import sys

import _path  # noqa: F401
from imgsearch.images import ImageError
from imgsearch.index import DEFAULT_INDEX, IndexLoadError
from imgsearch.search import Index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("image", help="an image file")
    p.add_argument("--index", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    p.add_argument("-k", type=int, default=10, help="neighbours per space (default: 10)")
    p.add_argument("--json", action="store_true", help='print one JSON object {"pixel": [...], "code": [...]}')
    a = p.parse_args(argv)
    if a.k < 1:
        p.error("-k must be at least 1")
    try:
        index = Index.load(a.index)
        results = index.search(a.image, k=a.k)
    except (ImageError, IndexLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(results.to_dict(), indent=1))
        return 0
    for space, hits in (("pixel space (exact Euclidean)", results.pixel), ("code space (Annoy, angular)", results.code)):
        print(f"\n{space}")
        print(f"{'rank':>4} {'id':>7} {'distance':>9}  {'label':<12} path")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:>4} {h.id:>7} {h.distance:>9.4f}  {str(h.label or '-'):<12} {h.path or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
