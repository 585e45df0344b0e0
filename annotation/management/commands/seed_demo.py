"""Seed a demo: an admin, two annotators, a helpfulness batch (MT-bench prompts, pairs sampled from the
current policy at two temperatures) and a safety batch (real Anthropic HH-RLHF harmless pairs in queue mode).

Safe to run again: it creates what is missing and prints the credentials.
"""

import itertools
import json
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from annotation import generation, services
from annotation.imports import read_hh_rlhf
from annotation.models import AnnotationBatch, Focus, PairSampling

DATA = Path(__file__).resolve().parents[2] / "demo_data"
# Reply length of the demo batches: a paragraph from SmolLM2-135M, and short enough that prompt mode shows
# a pair (two replies, one per temperature) within 15 s of sending the prompt on an idle 2-core machine
# (measured with bench/prompt_latency.py; see the README).
DEMO_MAX_NEW_TOKENS = 96

HELPFULNESS_GUIDELINES = """\
## Helpfulness (Llama 2, §3.2.1)

Judge **how well each response fulfils the user's request and provides the requested information**.

1. Read the whole dialogue, then both responses.
2. Choose the better one (**A** or **B**); the choice is forced.
3. Say how much better: **1** significantly better, **2** better, **3** slightly better,
   **4** negligibly better / unsure.
"""

SAFETY_GUIDELINES = """\
## Safety (Llama 2, §3.2.1 and §4.2)

Judge **whether the responses are unsafe**. A response that gives detailed instructions for making a bomb
may be helpful but is *unsafe*.

1. Label each response **safe** (S) or **unsafe** (U); the left response first, then the right.
2. Choose the **safer** response (A or B) and say how much better it is (1 to 4).
3. A good response first addresses immediate safety concerns, then explains the risks, then gives
   extra information if possible.
"""


class Command(BaseCommand):
    help = "Create demo users and two demo batches (idempotent). Pairs come from the current policy."

    def add_arguments(self, parser):
        parser.add_argument("--credentials-file", default=".local/demo-credentials.txt")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the platform is served (printed)")
        parser.add_argument("--safety-pairs", type=int, default=120)
        # The workers keep this many pairs ready; --sample-now of them are sampled before the page opens (with
        # SmolLM2 on 2 cores each pair adds seconds to the first `make run`), the rest by the sampling worker
        # in the background once it has started.
        parser.add_argument("--helpfulness-prompts", type=int, default=16,
                            help="pairs kept ready by the workers (default %(default)s)")
        parser.add_argument("--sample-now", type=int, default=4,
                            help="of those, pairs sampled before the command returns (default %(default)s)")
        parser.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS,
                            help="reply length of the demo batches, in tokens (default %(default)s)")

    @transaction.atomic
    def handle(self, *args, **options):
        if options["max_new_tokens"] < 1:
            raise CommandError("--max-new-tokens must be at least 1")
        cred_path = Path(options["credentials_file"])
        credentials = self._users(cred_path)
        users = {u.username: u for u in get_user_model().objects.filter(username__in=credentials)}
        helpfulness, new_h = AnnotationBatch.objects.get_or_create(
            name="Demo helpfulness, week 1",
            defaults={"focus": Focus.HELPFULNESS, "guidelines": HELPFULNESS_GUIDELINES,
                      "pair_sampling": PairSampling.TEMPERATURES, "max_new_tokens": options["max_new_tokens"]},
        )
        safety, new_s = AnnotationBatch.objects.get_or_create(
            name="Demo safety, week 1",
            defaults={"focus": Focus.SAFETY, "guidelines": SAFETY_GUIDELINES,
                      "pair_sampling": PairSampling.TEMPERATURES, "max_new_tokens": options["max_new_tokens"]},
        )
        for batch in (helpfulness, safety):
            batch.annotators.add(users["alice"], users["bob"])
            batch.reviewers.add(users["admin"])
        if new_h:
            questions = [json.loads(line) for line in (DATA / "mt_bench_questions.jsonl").open()]
            services.add_prompts(
                helpfulness,
                [{"messages": [{"role": "user", "content": q["turns"][0]}], "category": q["category"]}
                 for q in questions],
                source="mt-bench",
            )
            helpfulness.min_ready_pairs = options["helpfulness_prompts"]
            helpfulness.save(update_fields=["min_ready_pairs"])
            # Sent to the sampling queue when this transaction commits; the first --sample-now are sampled
            # here, with the same code the workers run, so that pairs are there when the page opens.
            tasks = services.refill_queue(helpfulness.pk)
            now = tasks[: max(options["sample_now"], 0)]
            if now:
                with tqdm(total=len(now), desc="sampling demo pairs", unit="pair") as bar:
                    bar.update(len(generation.sample_pairs(now[0].pk, batch_size=len(now))))
        if new_s:
            pairs = list(self._hh_pairs(options["safety_pairs"] * 2))
            services.create_queue_pairs(safety, pairs[: options["safety_pairs"]], seed=7)
            services.add_prompts(
                safety,
                [{"messages": [{"role": "user", "content": p.turns[0][1]}], "is_safety": True}
                 for p in pairs[options["safety_pairs"]:]],
                source="anthropic-hh-rlhf-harmless-red-team",
            )
        self.stdout.write(self.style.SUCCESS(f"Demo ready. Log in at {options['url']} with:"))
        for username, password in credentials.items():
            self.stdout.write(f"  {username:6} {password}")

    def _users(self, path: Path) -> dict[str, str]:
        saved = {}
        if path.exists():
            saved = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
        User = get_user_model()
        result = {}
        for username in ("admin", "alice", "bob"):
            user = User.objects.filter(username=username).first()
            password = saved.get(username)
            if user is None or password is None:
                password = secrets.token_urlsafe(9)
                user = user or User(username=username)
                user.is_staff = user.is_superuser = username == "admin"
                user.set_password(password)
                user.save()
            result[username] = password
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{u} {p}\n" for u, p in result.items()))
        return result

    def _hh_pairs(self, limit: int):
        pairs = read_hh_rlhf(DATA / "hh_rlhf_harmless_base_dev.jsonl.gz")
        for pair in itertools.islice(pairs, limit):
            yield services.PairInput(
                turns=list(pair.prefix), response_a=pair.chosen, response_b=pair.rejected,
                source="anthropic-hh-rlhf-harmless", is_safety=True,
            )
