"""`python scripts/interpolate.py --help`: the same program as `imgsearch interpolate` (see imgsearch/cli.py)."""
import sys

from imgsearch.cli import script

if __name__ == "__main__":
    sys.exit(script("interpolate"))
