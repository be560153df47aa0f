#!/usr/bin/env bash
# Start the app: ./run.sh [cifar10|FOLDER]
# Installs the requirements into .venv, builds data/index from the collection if there is
# none yet (default: CIFAR-10, downloaded), then serves the page on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements.txt
export IMGSEARCH_INDEX="${IMGSEARCH_INDEX:-data/index}"
if [ ! -e "$IMGSEARCH_INDEX/meta.json" ]; then
  # On failure (no network for CIFAR-10, say) the page itself explains and offers to build.
  .venv/bin/python scripts/build_index.py --data "${1:-cifar10}" --out "$IMGSEARCH_INDEX" || true
fi
exec .venv/bin/streamlit run app.py
