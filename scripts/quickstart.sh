#!/usr/bin/env bash
# The quickstart, on the CPU: set up .venv, write the synthetic reasoning-segmentation dataset, fine-tune READ from
# the shipped tiny base (assets/synthetic_base: a pre-trained tiny LLaVA and SAM) with train_ds.py (DeepSpeed; two
# data-parallel processes, see below), export it, evaluate it with eval.py (gIoU / cIoU and where the similarity
# map points) and write a report folder (metrics.json, loss_curve.png, predictions.png). The last line printed is
# the path of metrics.json.
#
#   bash scripts/quickstart.sh              # READ (SasP on)
#   bash scripts/quickstart.sh --compare    # READ and the LISA baseline (sasp.enabled=false), same budget
#   bash scripts/quickstart.sh --ablation   # READ, LISA and READ with discrete points (sasp.dtoc=false)
#
# Options: --out DIR (default runs/quickstart/<date-time>), --data DIR (default data/synthetic_quickstart; reused
# when it already holds the dataset), --seed N (train.seed, default the config's). Anything after "--" goes to
# every train_ds.py run as config overrides (e.g. -- train.steps_per_epoch=100). Model, data and schedule:
# configs/synthetic_tiny.yaml; the base: scripts/pretrain_base.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMPARE=0
ABLATION=0
SEED=""
OUT=""
DATA="data/synthetic_quickstart"
CONFIG="configs/synthetic_tiny.yaml"
OVERRIDES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --compare) COMPARE=1; shift ;;
    --ablation) COMPARE=1; ABLATION=1; shift ;;
    --seed) [ $# -ge 2 ] || { echo "quickstart.sh: --seed needs a value" >&2; exit 2; }; SEED="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || { echo "quickstart.sh: --out needs a value" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --data) [ $# -ge 2 ] || { echo "quickstart.sh: --data needs a value" >&2; exit 2; }; DATA="$2"; shift 2 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-runs/quickstart/$(date +%Y%m%d-%H%M%S)}"
if [ -e "$OUT/report/metrics.json" ]; then
  echo "quickstart.sh: $OUT already holds a finished quickstart; choose another --out" >&2
  exit 2
fi
mkdir -p "$OUT"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore

START=$(date +%s)
TIMES=()
stage() {  # stage NAME COMMAND...: run it with its output in $OUT/NAME.log and record its wall time
  local name="$1"; shift
  local t0; t0=$(date +%s)
  echo "[quickstart] $name ..." >&2
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    echo "[quickstart] $name failed; the last lines of $OUT/$name.log:" >&2
    tail -n 30 "$OUT/$name.log" >&2
    exit 1
  fi
  local dt=$(( $(date +%s) - t0 ))
  TIMES+=("\"$name\": $dt")
  echo "[quickstart] $name done in ${dt}s (${OUT}/$name.log; $(( $(date +%s) - START ))s so far)" >&2
}

# 1. the environment (a few minutes the first time, then a check of the requirements stamp)
t0=$(date +%s)
echo "[quickstart] setup ..." >&2
PY="$(bash scripts/setup_env.sh)"
TIMES+=("\"setup\": $(( $(date +%s) - t0 ))")

# 2. the dataset: 3 objects a scene, so a query-blind guess scores about 1/3 gIoU (the report prints it)
if [ ! -f "$DATA/reason_seg/ReasonSeg/synthetic_config.json" ]; then
  stage data "$PY" scripts/make_synthetic.py --out "$DATA" --num_train 3000 --num_val 200 --num_test 0 --seed 0 \
    --image_size 128 --num_objects 3,3
fi
# the pre-trained base (tiny LLaVA with its tokenizer, tiny SAM) ships in the repository
BASE="assets/synthetic_base"
if [ ! -f "$BASE/llava/model.safetensors" ] || [ ! -f "$BASE/sam.safetensors" ]; then
  echo "quickstart.sh: the pre-trained base $BASE is missing; rebuild it with" \
    "python scripts/pretrain_base.py --config configs/pretrain/synthetic_base.yaml --out $BASE" >&2
  exit 1
fi

# 3-5. train, export and evaluate one model.
# The recipe's global batch is 16: two data-parallel processes of train.batch_size=8 (torchrun; gloo on the CPU),
# each with half the cores. A model this small keeps a core busy with per-operation overhead rather than
# arithmetic, so two processes on 2 cores train on about twice the images per second of one process using both.
# With exactly one GPU, one process accumulates two micro-batches instead (the same global batch).
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" = 1 ]; then
  TRAIN=("$PY" train_ds.py); TRAIN_OVERRIDES=(train.grad_accumulation_steps=2)
else
  THREADS=$(( OMP_NUM_THREADS / 2 )); [ "$THREADS" -ge 1 ] || THREADS=1
  TRAIN=(env "OMP_NUM_THREADS=$THREADS" "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 train_ds.py)
  TRAIN_OVERRIDES=()
fi
run_model() {  # run_model NAME CONFIG_OVERRIDES...
  local name="$1"; shift
  local dir="$OUT/$name"
  stage "train_$name" "${TRAIN[@]}" --config "$CONFIG" "train.output_dir=$dir" "data.dataset_dir=$DATA" \
    "model.llava_path=$BASE/llava" "model.sam_checkpoint=$BASE/sam.safetensors" \
    ${SEED:+"train.seed=$SEED"} ${TRAIN_OVERRIDES[@]+"${TRAIN_OVERRIDES[@]}"} "$@" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
  stage "export_$name" "$PY" scripts/export_model.py --run "$dir" --checkpoint latest --out "$dir/model"
  stage "eval_$name" "$PY" eval.py --model "$dir/model" --dataset_dir "$DATA" --dataset ReasonSeg --split val \
    --prompts lisa --mode both --batch_size 16 --num_workers 1 --vis 8 --no_progress --output_dir "$dir/eval"
}
run_model read
RUNS=(--run read "$OUT/read" "$OUT/read/eval")
if [ "$COMPARE" = 1 ]; then
  run_model lisa sasp.enabled=false
  RUNS+=(--run lisa "$OUT/lisa" "$OUT/lisa/eval")
fi
if [ "$ABLATION" = 1 ]; then
  run_model discrete sasp.dtoc=false
  RUNS+=(--run discrete "$OUT/discrete" "$OUT/discrete/eval")
fi

# 6. the report
TIMES+=("\"total_before_report\": $(( $(date +%s) - START ))")
( IFS=,; echo "{${TIMES[*]}}" ) > "$OUT/timing.json"
if ! "$PY" scripts/make_report.py --out "$OUT/report" --timing "$OUT/timing.json" --dataset_dir "$DATA" \
    --split val "${RUNS[@]}" > "$OUT/report.out" 2> "$OUT/report.log"; then
  echo "[quickstart] the report failed:" >&2; tail -n 30 "$OUT/report.log" >&2; exit 1
fi
sed '$d' "$OUT/report.out" >&2  # the scores; the last line (the metrics path) is printed last, below
echo "[quickstart] finished in $(( $(date +%s) - START ))s; pictures in $OUT/report" >&2
echo "$OUT/report/metrics.json"
