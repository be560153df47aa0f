"""`python scripts/benchmark.py --help`: the same program as `imgsearch benchmark` (see imgsearch/cli.py)."""
import sys

from imgsearch.cli import script

if __name__ == "__main__":
    sys.exit(script("benchmark"))
