#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras, e.g. `dev`.
# torch is pinned to 2.13.0 in pyproject.toml: the CPU build these machines install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
