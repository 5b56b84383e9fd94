#!/usr/bin/env bash
# Set up, then lint and run the test suite (CPU, float32, tiny checkpoints made on the fly).
# The browser test needs Debian's chromium + chromium-driver: installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/browser-deps.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
