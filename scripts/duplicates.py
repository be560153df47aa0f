"""`python scripts/duplicates.py --help`: the same program as `imgsearch duplicates` (see imgsearch/cli.py)."""
import sys

from imgsearch.cli import script

if __name__ == "__main__":
    sys.exit(script("duplicates"))
