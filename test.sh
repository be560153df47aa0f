#!/usr/bin/env bash
# Run the tests: ./test.sh [pytest args]
# Installs requirements-dev.txt into .venv first. The browser test needs Debian's chromium
# (apt-get install chromium); it is skipped with a reason where /usr/bin/chromium is missing.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@" tests
