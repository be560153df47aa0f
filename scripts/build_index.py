"""`python scripts/build_index.py --help`: the same program as `imgsearch build-index` (see imgsearch/cli.py)."""
import sys

from imgsearch.cli import script

if __name__ == "__main__":
    sys.exit(script("build-index"))
