#!/usr/bin/env bash
# Create .venv and install what the project needs; sourced by run.sh and test.sh.
# Re-running is cheap: pip only checks what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r "${1:-requirements.txt}"
# The package itself, editable, with the `imgsearch` command; its dependencies are the pinned ones above.
if ! .venv/bin/python -c "import imgsearch.cli" 2>/dev/null || [ ! -x .venv/bin/imgsearch ]; then
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
fi
