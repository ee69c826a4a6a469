#!/usr/bin/env bash
# The prepared GPU check in one command (scripts/gpu_check.py; README "GPU check"). On a CUDA machine:
#
#   bash scripts/gpu_check.sh [gpu_check.py options]
#
# A machine without a package index gets its missing packages from .whl/ (filled beforehand, on a machine with one,
# by `bash scripts/gpu_check_wheels.sh`): they are installed into a private folder first, ahead of what is there.
# The summary goes to $OUT/gpu_check.json when OUT is set (a folder), else runs/gpu_check/; the log beside it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-runs/gpu_check}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE="$(mktemp -d /tmp/read_gpu_check_site.XXXXXX)"
  echo "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    || echo "warning: some carried wheels did not install; the check records what is missing"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" scripts/gpu_check.py --out "$DEST/gpu_check.json" "$@" 2>&1 | tee "$DEST/gpu_check.log"
