"""A few PPO iterations through the platform's trainer, for bench/gpu_ppo.sh (a helper).

Builds ``--prompts`` x ``--iterations`` synthetic prompts of about ``--prompt-tokens`` tokens (from the bundled
MT-Bench questions, so the checkpoint's tokenizer and chat template see real text) and trains the checkpoint in
``--checkpoint`` (bench/_make_llama7b_shape.py: Llama 2 7B's shape, random weights) with
``models_core.ppo_trainer.train_ppo``, the call the platform's rounds make: the policy, its frozen reference
pi_0 and a critic on the same backbone, each iteration sampling one response of up to ``--new-tokens`` tokens per
prompt, scoring, GAE, and one AdamW step per mini-batch for the policy and for the critic.

The reward is synthetic and costs nothing: each response's length in characters, whitened over the iteration's
batch (the combined reward is whitened too, Llama 2 §3.2.3). A 7B reward model would not fit beside the
policy, pi_0 and the critic on one GPU (see the header of bench/gpu_ppo.sh); its forward passes would add about as
much time as pi_0's do. No held-out prompts, no resumable checkpoints (at 7B one would be ~107 GB of weights and
optimizer states); the final policy is saved, as every run's is.

Prints one line per iteration (seconds, the rollout's generation seconds and tokens/s, the iteration's peak
memory) and one ``RESULT`` line. Peak memory: CUDA torch.cuda.max_memory_allocated, reset after each iteration;
CPU the process's peak RSS so far.

    python bench/_gpu_ppo_iter.py --checkpoint DIR --out DIR [--iterations 3] [--prompts 64] [--mini-batch 8]
        [--micro-batch 8] [--rollout-batch 64] [--new-tokens 128] [--prompt-tokens 128] [--device cuda]
        [--dtype bfloat16] [--gradient-checkpointing]
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

GIB = 2**30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations (the first includes warm-up)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per iteration (paper: 512)")
    parser.add_argument("--mini-batch", type=int, default=8, help="rollouts per optimizer step (paper: 64)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rollouts per training forward pass")
    parser.add_argument("--rollout-batch", type=int, default=64, help="rollouts per generate / scoring pass")
    parser.add_argument("--new-tokens", type=int, default=128, help="longest response sampled")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="about this many tokens per prompt")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    numbers = ("iterations", "prompts", "mini_batch", "micro_batch", "rollout_batch", "new_tokens", "prompt_tokens")
    if min(getattr(args, name) for name in numbers) < 1 or args.prompts % args.mini_batch:
        parser.error("the sizes must be positive, --prompts a multiple of --mini-batch")
    return args


def synthetic_prompts(tokenizer, n: int, tokens: int):
    """``n`` single-turn prompts of about ``tokens`` tokens each (chat template included), cut from a stream of
    MT-Bench questions at different offsets so that no two are the same."""
    from models_core.chat_format import render_prompt
    from models_core.ppo_trainer import PPOPrompt

    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    words = " ".join(turn for line in data.open() for turn in json.loads(line)["turns"]).split()
    overhead = len(tokenizer(render_prompt(tokenizer, [{"role": "user", "content": ""}]))["input_ids"])
    per_word = max(1.0, len(tokenizer(" ".join(words[:2000]))["input_ids"]) / 2000)  # tokens per word
    count = max(1, int((tokens - overhead) / per_word))
    prompts = []
    for i in range(n):
        start = (i * 37) % (len(words) - count - 1)
        prompts.append(PPOPrompt([{"role": "user", "content": f"{i}. " + " ".join(words[start:start + count])}]))
    return prompts


def length_reward(dialogues, responses, is_safety):
    """Response length in characters, whitened over the batch: a stand-in reward with a reward model's interface
    (models_core.ppo_trainer.RewardFn) and no cost."""
    import torch

    lengths = torch.tensor([float(len(text)) for text in responses])  # (B,)
    std = lengths.std(unbiased=False)
    return (lengths - lengths.mean()) / std if std > 0 else torch.zeros_like(lengths)


def main() -> int:
    args = parse_args()
    import torch
    from transformers import AutoTokenizer

    from models_core.ppo_config import PPOConfig
    from models_core.ppo_trainer import train_ppo

    cuda = args.device.startswith("cuda")
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    prompts = synthetic_prompts(tokenizer, args.prompts * args.iterations, args.prompt_tokens)
    config = PPOConfig(prompts_per_iteration=args.prompts, mini_batch_size=args.mini_batch,
                       micro_batch_size=args.micro_batch, rollout_batch_size=args.rollout_batch,
                       max_new_tokens=args.new_tokens, max_iterations=args.iterations, eval_every=args.iterations,
                       save_every_iterations=10**6, device=args.device, dtype=args.dtype,
                       gradient_checkpointing=args.gradient_checkpointing)

    def peak() -> int:
        if cuda:
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    iterations: list[dict] = []

    def progress(metrics: dict) -> None:
        tokens, rollout = metrics["generated_tokens"], metrics["rollout_seconds"]
        row = {"seconds": metrics["seconds"], "rollout_seconds": rollout, "tokens": tokens, "peak": peak(),
               "response_length": metrics["response_length_mean"], "kl": metrics["kl_mean"]}
        iterations.append(row)
        print(f"iteration {metrics['iteration']}/{args.iterations}: {row['seconds']:.1f} s, rollout "
              f"{rollout:.1f} s for {tokens} tokens ({tokens / rollout:.0f} tokens/s, mean length "
              f"{row['response_length']:.1f}), update and scoring {row['seconds'] - rollout:.1f} s, peak "
              f"{row['peak'] / GIB:.2f} GiB, KL {row['kl']:.4f}", flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats()  # so the next iteration's peak is its own

    started = time.perf_counter()
    try:
        result = train_ppo(args.checkpoint, prompts, length_reward, config, args.out, resume=False,
                           progress=progress)
    except torch.OutOfMemoryError as exc:
        done = len(iterations)
        print(f"OUT OF MEMORY after {done} of {args.iterations} iterations ({str(exc).splitlines()[0]}); try "
              "--gradient-checkpointing, a smaller --micro-batch or --rollout-batch, or fewer --new-tokens",
              file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    if result.iterations != args.iterations or len(iterations) != args.iterations:
        print(f"expected {args.iterations} iterations, the trainer ran {result.iterations}", file=sys.stderr)
        return 1

    # The first iteration allocates both AdamW states and warms the kernels; the rest are the steady state.
    steady = iterations[1:] or iterations
    tokens = sum(row["tokens"] for row in steady)
    rollout = sum(row["rollout_seconds"] for row in steady)
    reserved = torch.cuda.max_memory_reserved() if cuda else 0
    print(f"trainer: {result.iterations} iterations of {args.prompts} prompts, {config.steps_per_iteration} "
          f"optimizer steps each (mini-batch {args.mini_batch}, micro-batch {args.micro_batch}); call "
          f"{seconds:.1f} s (load, iterations, save)", flush=True)
    fields = {
        "iterations": result.iterations, "prompts": args.prompts, "mini_batch": args.mini_batch,
        "micro_batch": args.micro_batch, "rollout_batch": args.rollout_batch, "new_tokens": args.new_tokens,
        "prompt_tokens": args.prompt_tokens, "steps_per_iter": config.steps_per_iteration,
        "first_iter_s": round(iterations[0]["seconds"], 2),
        "iter_s": round(sum(row["seconds"] for row in steady) / len(steady), 2),
        "iter_s_each": ",".join(f"{row['seconds']:.2f}" for row in iterations),
        "rollout_s": round(rollout / len(steady), 2), "gen_tokens": tokens // len(steady),
        "gen_tok_s": round(tokens / rollout, 1) if rollout else 0,
        "response_length": round(sum(row["response_length"] for row in steady) / len(steady), 1),
        "call_s": round(seconds, 1), "peak_bytes": max(row["peak"] for row in iterations),
        "peak_each": ",".join(str(row["peak"]) for row in iterations), "reserved_bytes": reserved,
        "peak_kind": "cuda_max_allocated" if cuda else "rss", "kl": round(iterations[-1]["kl"], 5),
        "gradient_checkpointing": int(args.gradient_checkpointing), "device": args.device, "dtype": args.dtype,
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
