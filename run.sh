#!/usr/bin/env bash
# Start the app: ./run.sh [cifar10|FOLDER]
# Installs the requirements into .venv, builds data/index from the collection if there is
# none yet, or only one this version cannot read (default: CIFAR-10, downloaded), then serves
# the page on http://127.0.0.1:8501 (this machine only: see "Security" in the README).
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements.txt
export IMGSEARCH_INDEX="${IMGSEARCH_INDEX:-data/index}"
if ! .venv/bin/python -c 'import sys; from imgsearch.index import read_meta; read_meta(sys.argv[1])' \
    "$IMGSEARCH_INDEX" 2>/dev/null; then
  # On failure (no network for CIFAR-10, say) the page itself explains and offers to build.
  .venv/bin/python scripts/build_index.py --data "${1:-cifar10}" --out "$IMGSEARCH_INDEX" || true
fi
exec .venv/bin/streamlit run app.py
