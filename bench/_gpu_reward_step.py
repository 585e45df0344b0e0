"""One optimizer step of a reward model through the platform's trainer, for bench/gpu_reward.sh (a helper).

Builds ``--pairs`` synthetic preference pairs of about ``--tokens`` tokens per sequence (dialogue + response, from
the bundled MT-Bench questions, so the tokenizer of the checkpoint sees real text), and trains the checkpoint in
``--checkpoint`` (bench/_make_llama7b_shape.py: Llama 2 7B's shape, random weights) with
``models_core.reward_trainer.train_reward_model``: ``pairs_per_step`` = ``--pairs``, so one epoch is exactly one
optimizer step, reached through gradient accumulation of ``--micro-batch`` pairs (chosen and rejected in one
forward pass). Prints one ``RESULT`` line: pairs/s of the training loop, tokens/s, the step's seconds, peak
memory (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS) and the loss.

    python bench/_gpu_reward_step.py --checkpoint DIR --out DIR [--pairs 512] [--micro-batch 8] [--tokens 256]
        [--device cuda] [--dtype bfloat16] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=512, help="pairs in the one optimizer step (paper: 512)")
    parser.add_argument("--micro-batch", type=int, default=8, help="pairs per forward pass")
    parser.add_argument("--tokens", type=int, default=256, help="about this many tokens per sequence")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if min(args.pairs, args.micro_batch, args.tokens) < 1 or args.pairs % args.micro_batch:
        parser.error("--pairs, --micro-batch and --tokens must be positive, --pairs a multiple of --micro-batch")
    return args


def synthetic_pairs(tokenizer, n: int, tokens: int):
    """``n`` pairs of about ``tokens`` tokens per sequence: a user turn of MT-Bench questions and two responses."""
    from models_core.reward_data import PreferencePair

    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    texts = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    words = " ".join(texts).split()
    per_token = max(1.0, len(tokenizer(" ".join(words[:2000]))["input_ids"]) / 2000)  # tokens per word
    prompt_words, response_words = int(tokens * 0.6 / per_token), max(1, int(tokens * 0.4 / per_token))
    pairs = []
    for i in range(n):
        start = (i * 37) % (len(words) - prompt_words - 2 * response_words - 1)
        prompt = " ".join(words[start:start + prompt_words])
        cut = start + prompt_words
        chosen = " ".join(words[cut:cut + response_words])
        rejected = " ".join(words[cut + response_words:cut + 2 * response_words])
        pairs.append(PreferencePair(prompt=[{"role": "user", "content": prompt}], chosen=chosen, rejected=rejected,
                                    comparison_id=i))
    return pairs


def main() -> int:
    args = parse_args()
    import torch
    from transformers import AutoTokenizer

    from models_core.reward_config import RewardConfig
    from models_core.reward_trainer import train_reward_model

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    pairs = synthetic_pairs(tokenizer, args.pairs, args.tokens)
    config = RewardConfig(pairs_per_step=args.pairs, micro_batch_size=args.micro_batch, max_length=args.tokens + 64,
                          num_epochs=1.0, device=args.device, dtype=args.dtype, save_every_steps=10**6,
                          gradient_checkpointing=args.gradient_checkpointing, margin="small")
    steps = []
    started = time.perf_counter()
    result = train_reward_model(args.checkpoint, pairs, config, args.out, resume=False,
                                progress=lambda event: steps.append(event))
    seconds = time.perf_counter() - started
    if result.steps != 1:
        print(f"expected one optimizer step, the trainer made {result.steps}", file=sys.stderr)
        return 1
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lengths = [len(tokenizer(p.chosen)["input_ids"]) + len(tokenizer(p.prompt[0]["content"])["input_ids"])
               for p in pairs[:32]]
    mean_tokens = sum(lengths) / len(lengths)
    rate = result.pairs_per_second
    print(f"trainer: {result.steps} optimizer step, {result.pairs_seen} pairs in accumulation of "
          f"{args.pairs // args.micro_batch} micro-batches of {args.micro_batch}, ~{mean_tokens:.0f} tokens per "
          f"sequence; call {seconds:.1f} s (load, step, save)", flush=True)
    fields = {"pairs": result.pairs_seen, "micro_batch": args.micro_batch, "tokens_per_seq": round(mean_tokens),
              "pairs_s": round(rate, 3), "tokens_s": round(rate * 2 * mean_tokens, 1),
              "step_s": round(result.pairs_seen / rate, 2) if rate else 0, "call_s": round(seconds, 1),
              "peak_bytes": int(peak), "peak_kind": "cuda_max_allocated" if cuda else "rss",
              "loss": round(result.last_loss, 4), "device": args.device, "dtype": args.dtype}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
