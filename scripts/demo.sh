#!/usr/bin/env bash
# Set up, then run the main job on the embedded default (a tiny random checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/workbench demo "$@"
