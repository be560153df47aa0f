#!/usr/bin/env bash
# Start the app: ./run.sh [cifar10|FOLDER]
# Installs the requirements into .venv, builds data/index from the collection if there is
# none yet, or only one this version cannot read (default: CIFAR-10, downloaded), rebuilds one
# that an earlier version of the shipped model built (from its own collection), then serves
# the page on http://127.0.0.1:8501 (this machine only: see "Security" in the README).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements.txt
export IMGSEARCH_INDEX="${IMGSEARCH_INDEX:-data/index}"
# Build when there is no readable index, or rebuild one that an earlier shipped model built.
data=$(.venv/bin/python -c 'import sys; from imgsearch.index import rebuild_source; print(rebuild_source(*sys.argv[1:]) or "")' \
    "$IMGSEARCH_INDEX" "${1:-cifar10}") || data="${1:-cifar10}"
if [ -n "$data" ]; then
  # On failure (no network for CIFAR-10, say) the page itself explains and offers to build.
  .venv/bin/python scripts/build_index.py --data "$data" --out "$IMGSEARCH_INDEX" || true
fi
exec .venv/bin/streamlit run app.py
