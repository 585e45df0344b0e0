"""Sampling throughput: the whole worker path against bare ``model.generate``, measured in one run.

Worker path: prompt-mode tasks are committed (enqueue on commit), a real Celery worker process claims them
together, samples both responses of each pair and stores them in PostgreSQL; the clock runs from the
commit to the moment every pair is stored. Baseline: the same model, the same prompts, batch size and
sampling parameters, through ``model.generate`` directly (two calls, one per temperature, as the worker
makes for a two-temperature batch). Tokens per second count the tokens actually generated.

    python bench/sampling.py [--batch 16] [--new-tokens 64] [--checkpoint DIR] [--repeats 3]
                             [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--result-line]

Run it with ``make bench`` (which provides PostgreSQL and Redis); it creates and drops its own database.
``--device``/``--dtype`` apply to both paths (the worker gets them as LADDER_SAMPLER_DEVICE/_DTYPE).
``--result-line`` adds one machine-readable ``RESULT key=value ...`` line (bench/gpu_sampling.sh reads it).
Target: ratio >= 0.8 on CPU with the demo policy's shape.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="pairs sampled together (LADDER_SAMPLING_BATCH_SIZE)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a demo-shaped policy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
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


def main() -> int:
    args = parse_args()
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    from annotation import checkpoints
    from annotation.models import AnnotationBatch, Focus, PairSampling
    from tests.conftest import start_worker, stop_worker

    setup_test_environment()
    tmp = None if args.checkpoint else Path(tempfile.mkdtemp(prefix="ladder-bench-"))
    path = args.checkpoint or str(demo_shaped_policy(tmp / "policy"))
    texts = prompts(args.batch)
    temperatures = [0.7, 1.0]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    worker = None
    try:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("bench", password="x")
        checkpoint = checkpoints.register_checkpoint(name="bench-policy", path=path, make_current=True)
        batch = AnnotationBatch.objects.create(
            name="bench", focus=Focus.HELPFULNESS, pair_sampling=PairSampling.TEMPERATURES,
            temperatures=temperatures, top_p=0.9, max_new_tokens=args.new_tokens, checkpoint_a=checkpoint,
        )
        batch.annotators.add(user)
        step = time.perf_counter()
        worker = start_worker("bench-worker.log", LADDER_SAMPLING_BATCH_SIZE=str(args.batch),
                              LADDER_SAMPLER_DEVICE=args.device, LADDER_SAMPLER_DTYPE=args.dtype,
                              PYTHONPATH=str(ROOT))
        print(f"  worker started in {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        worker_path(batch, user, texts[:1])  # warm-up: the worker loads the model once and keeps it
        print(f"  worker warm-up (loads the model, samples one pair) {time.perf_counter() - step:.1f} s", flush=True)
        step = time.perf_counter()
        bare_generate(path, texts[:1], temperatures[:1], 4, args.device, args.dtype)  # warm-up
        print(f"  baseline warm-up (loads the model, 4 tokens) {time.perf_counter() - step:.1f} s", flush=True)
        rows = []
        for _ in range(args.repeats):
            b_tokens, b_seconds = bare_generate(path, texts, temperatures, args.new_tokens, args.device, args.dtype)
            w_tokens, w_seconds = worker_path(batch, user, texts)
            rows.append((b_tokens / b_seconds, w_tokens / w_seconds))
            print(f"  baseline {b_tokens} tokens in {b_seconds:.2f} s = {b_tokens / b_seconds:8.1f} tok/s   "
                  f"worker path {w_tokens} tokens in {w_seconds:.2f} s = {w_tokens / w_seconds:8.1f} tok/s",
                  flush=True)
        baseline = statistics.median(r[0] for r in rows)
        through_worker = statistics.median(r[1] for r in rows)
        print(f"sampling: batch {args.batch} pairs x 2 responses, {args.new_tokens} new tokens, model {path}")
        print(f"median tokens/s: bare model.generate {baseline:.1f}, whole worker path {through_worker:.1f}")
        print(f"ratio worker/bare = {through_worker / baseline:.2f} (target >= 0.80)")
        if args.result_line:
            policy = bare_policy(path, args.device, args.dtype)
            parameters = sum(p.numel() for p in policy.model.parameters())
            model_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters())
            print(f"RESULT baseline_tok_s={baseline:.2f} worker_tok_s={through_worker:.2f} "
                  f"ratio={through_worker / baseline:.4f} batch={args.batch} new_tokens={args.new_tokens} "
                  f"parameters={parameters} model_bytes={model_bytes} device={policy.device.type} "
                  f"dtype={str(policy.dtype).removeprefix('torch.')}", flush=True)
        return 0
    finally:
        if worker is not None:
            stop_worker(worker)
        connection.creation.destroy_test_db(old_name, verbosity=0)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
