#!/usr/bin/env bash
# GPU check of PPO at Llama 2 7B scale: a few iterations through the platform's trainer (models_core.ppo_trainer),
# policy, frozen reference pi_0 and critic on one GPU, the loop the paper runs 200-400 times a round (§3.2.3).
#
# What it checks
#   On one CUDA GPU (H200), in bfloat16, a policy of Llama 2 7B's exact shape (32 layers, hidden 4096, 32 heads,
#   SwiGLU 11008, vocabulary 32000; random weights), its reference pi_0 (a frozen copy) and a critic (the same
#   backbone with a one-output head) run --iterations PPO iterations through train_ppo, the call the platform's
#   rounds make: each samples one response of up to --new-tokens tokens for each of --prompts prompts (about
#   --prompt-tokens tokens each), scores them under the policy, pi_0 and the critic, computes GAE, and takes one
#   AdamW step per mini-batch of --mini-batch rollouts (accumulated in micro-batches of --micro-batch) for the
#   policy and for the critic. Speed and memory depend on shape and dtype, not on the weights' values. The reward
#   is synthetic (response length, whitened over the batch): a 7B reward model would not fit beside the three
#   models (13.5 GB more, past the H200's memory at the optimizer step below; Llama 2 used two), and its forward
#   passes would cost about what pi_0's do. Steps: (1) the GPU is there (nvidia-smi, a CUDA build of torch); (2)
#   the checkpoint is made on the GPU and saved as safetensors under /tmp by bench/_make_llama7b_shape.py (reused
#   when already there, shared with bench/gpu_sampling.sh and bench/gpu_reward.sh); (3) bench/_gpu_ppo_iter.py
#   builds the prompts and calls train_ppo with no held-out prompts and no resumable checkpoints (one would hold
#   ~107 GB of weights and optimizer states); the final policy is saved (13.5 GB) as every run's is.
#
# How to run it on a GPU machine (from the repository root; no network needed once installed)
#   python3.11 -m venv .venv
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/<cuda tag>  # CUDA build
#   .venv/bin/pip install -e '.[local,test]'    # as the Makefile's stamp target does (torch 2.13.0 is kept)
#   bash bench/gpu_ppo.sh [--iterations 3] [--prompts 64] [--mini-batch 8] [--micro-batch 8] [--rollout-batch 64]
#                         [--new-tokens 128] [--prompt-tokens 128] [--gradient-checkpointing]
#                         [--dir /tmp/ladder-llama2-7b-shape]
#   bash bench/gpu_ppo.sh --smoke    # CPU, tiny model, 2 iterations of 8 prompts, same code path: the plumbing
#   Without a GPU (or with the CPU build of torch) it stops at once with exit status 2.
#
# Memory (bf16 weights, gradients and AdamW states, as gpu_reward.sh; 8 bytes a trained parameter): policy 6.74 B
#   parameters x 8 = 53.9 GB, critic 6.61 B (no LM head) x 8 = 52.9 GB, pi_0 6.74 B x 2 = 13.5 GB: 120 GB
#   (112 GiB) held throughout once the first step has made the AdamW states (gradients stay until the next
#   mini-batch, so through the next rollout too). On top: at each optimizer step AdamW's foreach path makes one
#   parameter-sized temporary (sqrt of the second moment, 13.5 GB): ~134 GB (125 GiB), the expected peak; the
#   rollout's KV cache (64 rows x 256 positions x 0.5 MB) 8.6 GB: ~129 GB; the update's activations at micro-batch
#   8 x ~256 tokens ~12 GB without gradient checkpointing (~1 GB with), while that mini-batch's gradients are not
#   yet all there: below the step's peak. So it fits the H200's ~140 GiB with ~15 GiB to spare, not an 80 GB H100
#   (that needs ZeRO or offloading). --gradient-checkpointing (PPOConfig.gradient_checkpointing) matters only for
#   larger micro-batches or longer sequences; PYTORCH_CUDA_ALLOC_CONF defaults to expandable_segments:True here to
#   keep fragmentation from eating the margin. bf16 weights with the paper's 1e-6 rate round most updates away:
#   a check of speed and memory, not a recipe (the platform's dtype "auto" keeps float32 weights, 16+ bytes a
#   parameter, which does not fit 7B on one GPU).
#
# Budget: 5 minutes in all (GPU_BENCH_BUDGET_S=300); the iterations get what model creation left and are stopped
#   if they run over. Expected on an H200 (not yet measured): create ~5 s, save ~15-40 s (0 s when reused), load
#   three models ~30-60 s, an iteration ~10-20 s (rollout 64 x 128 tokens of eager decoding ~5 s; scoring ~2 s;
#   8 mini-batches of forward, backward and two AdamW steps ~5-8 s; the first iteration a few s more, as it
#   allocates the AdamW states), the final save ~15-40 s: 2-3 minutes.
#
# What the numbers mean
#   s/iteration   the trainer's own clock per iteration (rollout, scoring, update), the mean over the iterations
#                 after the first (the first is shown apart); beside it, scaled linearly to 512 prompts, the
#                 Llama 2 paper's ~330 s per iteration for 70B at 512 prompts (§3.2.3, FSDP over many GPUs) as
#                 context, not as a target: a 10x larger model, other hardware, other response lengths;
#   generation    tokens sampled per second in the rollout (generate, timed inside the iteration), over the same
#                 iterations; tokens are the responses' real tokens, EOS included;
#   peak memory   torch.cuda.max_memory_allocated per iteration (reset after each) and the largest (--smoke: the
#                 process's peak RSS); reserved is torch.cuda.max_memory_reserved (what the allocator held).
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET_S=${GPU_BENCH_BUDGET_S:-300}
SMOKE=0
ITERATIONS="" PROMPTS="" MINI="" MICRO="" ROLLOUT="" NEW_TOKENS="" PROMPT_TOKENS=""
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
    --iterations) ITERATIONS=$(value "$@") || exit 64; shift ;;
    --prompts) PROMPTS=$(value "$@") || exit 64; shift ;;
    --mini-batch) MINI=$(value "$@") || exit 64; shift ;;
    --micro-batch) MICRO=$(value "$@") || exit 64; shift ;;
    --rollout-batch) ROLLOUT=$(value "$@") || exit 64; shift ;;
    --new-tokens) NEW_TOKENS=$(value "$@") || exit 64; shift ;;
    --prompt-tokens) PROMPT_TOKENS=$(value "$@") || exit 64; shift ;;
    --gradient-checkpointing) CKPT_FLAG=--gradient-checkpointing ;;
    --dir) [ $# -ge 2 ] || { echo "--dir needs a folder" >&2; exit 64; }; DIR=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then  # what a flag does not set: a tiny run on CPU, or the 7B run's sizes
  ITERATIONS=${ITERATIONS:-2} PROMPTS=${PROMPTS:-8} MINI=${MINI:-4} MICRO=${MICRO:-4} ROLLOUT=${ROLLOUT:-8}
  NEW_TOKENS=${NEW_TOKENS:-16} PROMPT_TOKENS=${PROMPT_TOKENS:-32}
else
  ITERATIONS=${ITERATIONS:-3} PROMPTS=${PROMPTS:-64} MINI=${MINI:-8} MICRO=${MICRO:-8} ROLLOUT=${ROLLOUT:-64}
  NEW_TOKENS=${NEW_TOKENS:-128} PROMPT_TOKENS=${PROMPT_TOKENS:-128}
fi
if [ $((PROMPTS % MINI)) -ne 0 ]; then
  echo "--prompts ($PROMPTS) must be a multiple of --mini-batch ($MINI): each iteration is whole mini-batches" >&2
  exit 64
fi

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
  echo "== smoke mode: tiny model of the same code path, CPU, float32, $ITERATIONS iterations of $PROMPTS prompts"
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
  GPU_MIB=$(echo "$GPU_LINE" | cut -d, -f3 | tr -dc '0-9')
  echo "== GPU: $GPU_NAME | driver $(echo "$GPU_LINE" | cut -d, -f2 | xargs) | $(echo "$GPU_LINE" | cut -d, -f3 | xargs)"
  if ! TORCH_LINE=$("$PY" -c 'import torch, sys
ok = torch.version.cuda is not None and torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
sys.exit(0 if ok else 1)' 2>&1); then
    echo "FAIL: torch cannot use the GPU ($TORCH_LINE); install the CUDA build of torch 2.13.0 (see header)" >&2
    exit 2
  fi
  echo "== $TORCH_LINE"
  if [ -n "$GPU_MIB" ] && [ "$GPU_MIB" -lt 135000 ]; then
    echo "== WARNING: $GPU_MIB MiB is less than the ~125 GiB this needs (see the header): expect it to run out" \
         "of memory"
  fi
  export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
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
  echo "FAIL: only $LEFT s of the $BUDGET_S s budget left for the iterations" >&2
  exit 1
fi
OUT=$(mktemp -d /tmp/ladder-gpu-ppo-XXXXXX)
LOG="$OUT/log"
trap 'rm -rf "$OUT"' EXIT
T=$(now)
echo "== PPO: $ITERATIONS iterations of $PROMPTS prompts (~$PROMPT_TOKENS tokens, up to $NEW_TOKENS new), mini-batch" \
     "$MINI, micro-batch $MICRO, rollout batch $ROLLOUT, $DEVICE $DTYPE" \
     "${CKPT_FLAG:+(gradient checkpointing) }(at most $LEFT s)"
set +e
timeout -s INT -k 30 "$LEFT" "$PY" bench/_gpu_ppo_iter.py --checkpoint "$DIR" --out "$OUT/run" \
  --iterations "$ITERATIONS" --prompts "$PROMPTS" --mini-batch "$MINI" --micro-batch "$MICRO" \
  --rollout-batch "$ROLLOUT" --new-tokens "$NEW_TOKENS" --prompt-tokens "$PROMPT_TOKENS" \
  --device "$DEVICE" --dtype "$DTYPE" $CKPT_FLAG 2>&1 | tee "$LOG"
CODE=${PIPESTATUS[0]}
set -e
echo "== step ppo: $(since "$T") s"
if [ "$CODE" -ne 0 ]; then
  [ "$CODE" -eq 124 ] && echo "FAIL: the iterations ran past the $BUDGET_S s budget" >&2
  echo "FAIL: bench/_gpu_ppo_iter.py exited with status $CODE" >&2
  exit 1
fi
RESULT=$(grep '^RESULT ' "$LOG" | tail -n 1 || true)
if [ -z "$RESULT" ]; then
  echo "FAIL: bench/_gpu_ppo_iter.py printed no RESULT line" >&2
  exit 1
fi
PARAMS=$("$PY" - "$DIR" <<'PYEOF'
import json, sys
from pathlib import Path
print(json.loads((Path(sys.argv[1]) / "ladder-shape.json").read_text()).get("parameters", 0))
PYEOF
)

echo "== report ($GPU_NAME, total $(since "$T0") s of the $BUDGET_S s budget)"
echo "$RESULT" | awk -v params="$PARAMS" '{
  for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  printf "  model          %.3f B parameters: policy, pi_0 and critic, %s, %s%s\n", params / 1e9, v["dtype"],
         v["device"], v["gradient_checkpointing"] ? ", gradient checkpointing" : ""
  printf "  iteration      %d prompts, ~%d prompt tokens, responses of %.1f tokens (at most %d), %d optimizer" \
         " steps (mini-batch %d, micro-batch %d)\n", v["prompts"], v["prompt_tokens"], v["response_length"],
         v["new_tokens"], v["steps_per_iter"], v["mini_batch"], v["micro_batch"]
  printf "  s/iteration    %.2f (mean after the first; first %.2f; each %s)\n", v["iter_s"], v["first_iter_s"],
         v["iter_s_each"]
  printf "  generation     %.0f tokens/s (%d tokens in %.2f s of rollout per iteration, batch %d)\n",
         v["gen_tok_s"], v["gen_tokens"], v["rollout_s"], v["rollout_batch"]
  n = split(v["peak_each"], each, ",")
  line = ""
  for (i = 1; i <= n; i++) line = line sprintf("%s%.2f", i > 1 ? ", " : "", each[i] / 2^30)
  printf "  peak memory    %.2f GiB (%s; each iteration %s GiB)", v["peak_bytes"] / 2^30, v["peak_kind"], line
  if (v["reserved_bytes"] > 0) printf ", reserved %.2f GiB", v["reserved_bytes"] / 2^30
  printf "\n"
  printf "  vs the paper   %.1f s per iteration scaled to 512 prompts, %.3g B on one device; Llama 2 reports ~330 s" \
         " for 70B at 512 prompts (context, not a target)\n", v["iter_s"] * 512 / v["prompts"], params / 1e9
}'
