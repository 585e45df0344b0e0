#!/usr/bin/env bash
# GPU check of reward-model training at Llama 2 7B scale: one optimizer step of 512 pairs through the platform's
# trainer (models_core.reward_trainer), the step the paper takes thousands of times (§3.2.2).
#
# What it checks
#   On one CUDA GPU (H100/H200), in bfloat16, a reward model of Llama 2 7B's exact shape (32 layers, hidden 4096,
#   32 heads, SwiGLU 11008, vocabulary 32000; random weights, a new scalar score head) takes ONE optimizer step of
#   512 preference pairs (the paper's batch), reached through gradient accumulation of --micro-batch pairs (chosen
#   and rejected in one forward pass), AdamW, gradient clipping, the margin loss. Speed and memory depend on shape
#   and dtype, not on the weights' values. Steps: (1) the GPU is there (nvidia-smi, a CUDA build of torch); (2)
#   the checkpoint is made on the GPU and saved as safetensors under /tmp by bench/_make_llama7b_shape.py (reused
#   when already there, shared with bench/gpu_sampling.sh); (3) bench/_gpu_reward_step.py builds 512 synthetic
#   pairs of about --tokens tokens per sequence and calls train_reward_model with pairs_per_step 512, one epoch.
#
# How to run it on a GPU machine (from the repository root; no network needed once installed)
#   python3.11 -m venv .venv
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/<cuda tag>  # CUDA build
#   .venv/bin/pip install -e '.[local,test]'    # as the Makefile's stamp target does (torch 2.13.0 is kept)
#   bash bench/gpu_reward.sh [--pairs 512] [--micro-batch 8] [--tokens 256] [--gradient-checkpointing]
#                            [--dir /tmp/ladder-llama2-7b-shape]
#   bash bench/gpu_reward.sh --smoke    # CPU, tiny model, 32 pairs, same code path: proves the plumbing anywhere
#   Without a GPU (or with the CPU build of torch) it stops at once with exit status 2.
#
# Budget: 5 minutes in all (GPU_BENCH_BUDGET_S=300); the step gets what model creation left and is stopped if it
#   runs over. Memory of a full bf16 fine-tune on one GPU: weights 13.5 GB + gradients 13.5 GB + AdamW's two
#   states 27 GB (bf16 like the weights) + activations; about 60-75 GB at micro-batch 8 x 2 sequences x 256
#   tokens without checkpointing, so it fits an 80 GB H100 and a 141 GB H200. Expected on an H100: create ~5 s,
#   save ~15-40 s (0 s when reused), load ~10-20 s, the step 512 x 2 x ~256 tokens = 262k tokens at
#   6 x 6.7e9 FLOP per token ~ 1.1e16 FLOP, 30-60 s, the final save ~15-40 s: 2-3 minutes.
#
# What the numbers mean
#   pairs/s     pairs of the training loop per second (trainer's own clock: forward and backward of every
#               micro-batch, the optimizer step), tokens/s the same in tokens (both sequences of a pair);
#   peak memory torch.cuda.max_memory_allocated over the call (--smoke: peak RSS of the process);
#   MFU         tokens/s x 6 x parameters / the GPU's dense bf16 peak (H100 SXM 989e12, H200 989e12, H100 PCIe
#               756e12, A100 312e12 FLOP/s; PEAK_FLOPS overrides), how much of the hardware the step used.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${GPU_BENCH_BUDGET_S:-300}
SMOKE=0
PAIRS=512
MICRO=8
TOKENS=256
CKPT_FLAG=""
DIR=""
value() {  # value OPTION "$@": the option's value, a whole number of at least 1
  if [ $# -lt 2 ] || ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
    echo "$1 needs a whole number of at least 1 (see --help)" >&2
    exit 64
  fi
  echo "$2"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --pairs) PAIRS=$(value "$@") || exit 64; shift ;;
    --micro-batch) MICRO=$(value "$@") || exit 64; shift ;;
    --tokens) TOKENS=$(value "$@") || exit 64; shift ;;
    --gradient-checkpointing) CKPT_FLAG=--gradient-checkpointing ;;
    --dir) [ $# -ge 2 ] || { echo "--dir needs a folder" >&2; exit 64; }; DIR=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

PY=${PYTHON:-.venv/bin/python}
if ! [ -x "$PY" ] && ! command -v "$PY" >/dev/null; then
  echo "no Python at $PY: create the venv first (see the header of $0), or set PYTHON" >&2
  exit 2
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)

if [ "$SMOKE" = 1 ]; then
  SHAPE=smoke DEVICE=cpu DTYPE=float32
  DIR=${DIR:-/tmp/ladder-llama-smoke-shape}
  [ "$PAIRS" = 512 ] && PAIRS=32
  [ "$TOKENS" = 256 ] && TOKENS=32
  if [ $((PAIRS % MICRO)) -ne 0 ]; then
    echo "--pairs ($PAIRS) must be a multiple of --micro-batch ($MICRO): one optimizer step of whole micro-batches" >&2
    exit 64
  fi
  GPU_NAME="CPU (smoke mode)"
  PEAK=${PEAK_FLOPS:-1e11}
  echo "== smoke mode: tiny model of the same code path, CPU, float32, $PAIRS pairs, assumed peak $PEAK FLOP/s"
else
  SHAPE=llama2-7b DEVICE=cuda DTYPE=bfloat16
  if [ $((PAIRS % MICRO)) -ne 0 ]; then
    echo "--pairs ($PAIRS) must be a multiple of --micro-batch ($MICRO): one optimizer step of whole micro-batches" >&2
    exit 64
  fi
  DIR=${DIR:-/tmp/ladder-llama2-7b-shape}
  if ! command -v nvidia-smi >/dev/null; then
    echo "FAIL: nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver" \
         "(use --smoke to test the plumbing on a CPU)" >&2
    exit 2
  fi
  if ! GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1) \
      || [ -z "$GPU_LINE" ] || [[ "$GPU_LINE" == *"failed"* ]] || [[ "$GPU_LINE" == *"No devices"* ]]; then
    echo "FAIL: nvidia-smi finds no usable GPU: ${GPU_LINE:-no output}" >&2
    exit 2
  fi
  GPU_NAME=$(echo "$GPU_LINE" | cut -d, -f1 | sed 's/ *$//')
  echo "== GPU: $GPU_NAME | driver $(echo "$GPU_LINE" | cut -d, -f2 | xargs) | $(echo "$GPU_LINE" | cut -d, -f3 | xargs)"
  if ! TORCH_LINE=$("$PY" -c 'import torch, sys
ok = torch.version.cuda is not None and torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
sys.exit(0 if ok else 1)' 2>&1); then
    echo "FAIL: torch cannot use the GPU ($TORCH_LINE); install the CUDA build of torch 2.13.0 (see header)" >&2
    exit 2
  fi
  echo "== $TORCH_LINE"
  case "$GPU_NAME" in
    *H200*) TABLE_PEAK=989e12 ;;
    *H100*PCIe*) TABLE_PEAK=756e12 ;;
    *H100*) TABLE_PEAK=989e12 ;;
    *A100*) TABLE_PEAK=312e12 ;;
    *) TABLE_PEAK="" ;;
  esac
  PEAK=${PEAK_FLOPS:-$TABLE_PEAK}
  if [ -z "$PEAK" ]; then
    echo "FAIL: no bf16 peak known for '$GPU_NAME'; set PEAK_FLOPS (dense bf16 FLOP/s)" >&2
    exit 2
  fi
fi
echo "== step checks: $(since "$T0") s"

T=$(now)
echo "== checkpoint ($SHAPE, $DTYPE) in $DIR"
if ! timeout -k 10 $((BUDGET_S - 60)) \
    "$PY" bench/_make_llama7b_shape.py "$DIR" --shape "$SHAPE" --device "$DEVICE" --dtype "$DTYPE"; then
  echo "FAIL: could not make the checkpoint in $DIR within $((BUDGET_S - 60)) s" >&2
  exit 1
fi
echo "== step checkpoint: $(since "$T") s"

LEFT=$(awk -v b="$BUDGET_S" -v e="$(since "$T0")" 'BEGIN { printf "%d", b - e - 5 }')
if [ "$LEFT" -lt 30 ]; then
  echo "FAIL: only $LEFT s of the $BUDGET_S s budget left for the step" >&2
  exit 1
fi
OUT=$(mktemp -d /tmp/ladder-gpu-reward-XXXXXX)
LOG="$OUT/log"
trap 'rm -rf "$OUT"' EXIT
T=$(now)
echo "== one optimizer step: $PAIRS pairs, micro-batch $MICRO, ~$TOKENS tokens per sequence, $DEVICE $DTYPE" \
     "${CKPT_FLAG:+(gradient checkpointing) }(at most $LEFT s)"
set +e
timeout -s INT -k 30 "$LEFT" "$PY" bench/_gpu_reward_step.py --checkpoint "$DIR" --out "$OUT/run" \
  --pairs "$PAIRS" --micro-batch "$MICRO" --tokens "$TOKENS" --device "$DEVICE" --dtype "$DTYPE" $CKPT_FLAG \
  2>&1 | tee "$LOG"
CODE=${PIPESTATUS[0]}
set -e
echo "== step training: $(since "$T") s"
if [ "$CODE" -ne 0 ]; then
  [ "$CODE" -eq 124 ] && echo "FAIL: the step ran past the $BUDGET_S s budget" >&2
  echo "FAIL: bench/_gpu_reward_step.py exited with status $CODE" >&2
  exit 1
fi
RESULT=$(grep '^RESULT ' "$LOG" | tail -n 1 || true)
if [ -z "$RESULT" ]; then
  echo "FAIL: bench/_gpu_reward_step.py printed no RESULT line" >&2
  exit 1
fi
PARAMS=$("$PY" - "$DIR" <<'PYEOF'
import json, sys
from pathlib import Path
print(json.loads((Path(sys.argv[1]) / "ladder-shape.json").read_text()).get("parameters", 0))
PYEOF
)

echo "== report ($GPU_NAME, total $(since "$T0") s of the $BUDGET_S s budget)"
echo "$RESULT" | awk -v peak="$PEAK" -v params="$PARAMS" '{
  for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "  model          %.3f B parameters (+ score head), %s, %s\n", params / 1e9, v["dtype"], v["device"]
  printf "  step           %d pairs = %d micro-batches of %d, ~%d tokens per sequence, %.1f s, loss %s\n",
         v["pairs"], v["pairs"] / v["micro_batch"], v["micro_batch"], v["tokens_per_seq"], v["step_s"], v["loss"]
  printf "  throughput     %.2f pairs/s, %.0f tokens/s\n", v["pairs_s"], v["tokens_s"]
  printf "  peak memory    %.2f GB (%s)\n", v["peak_bytes"] / 1e9, v["peak_kind"]
  printf "  MFU            %.3f (6 x parameters x tokens/s over %.3g FLOP/s)\n", 6 * params * v["tokens_s"] / peak, peak
}'
