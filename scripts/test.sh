#!/usr/bin/env bash
# Run the test suite. Sets up .venv on first use, and Chromium for the web demo's browser test
# (scripts/setup_browser.sh). Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow` for the long tests, `-k sasp` for a subset).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/setup_env.sh")"
bash "$ROOT/scripts/setup_browser.sh"
cd "$ROOT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" -m pytest -q "$@"
