#!/usr/bin/env bash
# Fill .whl/ with the wheels that scripts/gpu_check.sh installs on a GPU machine without a package index: the pinned
# versions of what such a machine may lack or hold in another version (Python 3.12, x86_64 Linux; torch, numpy,
# opencv, sentencepiece, accelerate and tokenizers are expected there already).
#
#   bash scripts/gpu_check_wheels.sh            # with bitsandbytes (about 27 MiB in all)
#   bash scripts/gpu_check_wheels.sh --no-bnb   # without it (about 19 MiB); the 4/8-bit parts are then skipped
#
# A device call carries at most 64 MiB (the working tree included), so the bitsandbytes wheel keeps only its CUDA 13
# libraries (the GPU machines' torch is built for CUDA 13.0) and drops those for CUDA 11/12 and ROCm (35 MiB).
#
# DeepSpeed is published as a source archive: its pure-Python wheel is built here (no op compiled; the check's
# optimizer is torch's AdamW). .whl/ is git-ignored.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
BNB=1
for arg in "$@"; do
  case "$arg" in
    --no-bnb) BNB=0 ;;
    *) echo "error: unknown option $arg (only --no-bnb)" >&2; exit 2 ;;
  esac
done
rm -rf .whl && mkdir -p .whl
PACKAGES=(transformers==5.24.0 peft==0.21.0 segment-anything==1.0 pycocotools==2.0.11 regex==2026.12.2
          hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing_extensions==4.16.0)
[ "$BNB" = 1 ] && PACKAGES+=(bitsandbytes==0.50.2)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${PACKAGES[@]}"
if [ "$BNB" = 1 ]; then
  "$PY" - .whl/bitsandbytes-*.whl <<'PYEOF'
import re, sys, zipfile
from pathlib import Path

path = Path(sys.argv[1])
drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[0-2]\d|rocm\d+)\.so$")
slim = path.with_suffix(".slim")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if drop.search(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = [line for line in data.decode().splitlines() if not drop.search(line.split(",")[0])]
            data = ("\n".join(lines) + "\n").encode()
        dst.writestr(item, data)
slim.replace(path)
PYEOF
fi
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -1 .whl
echo "$(du -sm .whl | cut -f1) MB in .whl/"
