"""Measure the two ways of showing a collection's photos (imgsearch/photos.py) on generated camera JPEGs.

    python scripts/measure_previews.py [--photos 60] [--folder DIR] [--json docs/previews.json]

Run it under the heavy-work lock on a shared machine: it measures time.
"""
import argparse
import json
import sys
import tempfile

from imgsearch.photos import measure_previews, write_camera_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/measure_previews.py", description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=60, help="generated 12-megapixel JPEGs (default: 60)")
    p.add_argument("--folder", default=None, help="write them here (default: a temporary folder, removed after)")
    p.add_argument("--json", default="docs/previews.json", help="where the figures go (default: docs/previews.json)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.folder or tmp
        write_camera_folder(folder, a.photos)
        figures = measure_previews(folder)
    with open(a.json, "w") as f:
        json.dump(figures, f, indent=1)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
