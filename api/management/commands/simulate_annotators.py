"""Simulated annotators against a running Ladder, through its public API (see ``api.simulation``)."""

from __future__ import annotations

import dataclasses
import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from tqdm import tqdm

from annotation import services
from annotation.models import AnnotationBatch
from api import simulation, tokens
from models_core.gold import GOLDS, get_gold


class Command(BaseCommand):
    help = ("Run N simulated annotators against a Ladder server through its REST API: each gets an account and a "
            "token of its own, takes the next task, thinks, and submits the label a gold preference function "
            "gives (Bradley-Terry noise; profiles careful, noisy, careless, left), sometimes skipping or walking "
            "away. Prints a summary (labels, latencies per endpoint, errors) and writes the clients' log.")

    def add_arguments(self, parser):
        parser.add_argument("--annotators", type=int, default=10, help="how many (default 10)")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
        parser.add_argument("--gold", required=True, choices=sorted(GOLDS),
                            help="the gold preference function: " + "; ".join(
                                f"{name}: {gold.description}" for name, gold in sorted(GOLDS.items())))
        parser.add_argument("--pace", choices=["human", "full"], default="human",
                            help="human: think --think seconds (with jitter) per task; full: no pause")
        parser.add_argument("--think", type=float, default=6.0,
                            help="mean think time at human pace, seconds (default 6; jitter 0.5x-1.5x)")
        parser.add_argument("--batch", type=int, action="append", dest="batches",
                            help="a batch to work on (repeat; default: every open batch)")
        parser.add_argument("--profiles", default=",".join(f"{k}={v}" for k, v in simulation.DEFAULT_MIX.items()),
                            help="profile shares (default %(default)s)")
        parser.add_argument("--skip-rate", type=float, help="share of tasks skipped, for every profile "
                            "(default: the profile's, 0.02)")
        parser.add_argument("--abandon-rate", type=float, help="share of tasks walked away from (the annotator then "
                            "stops; its lease lapses), for every profile (default: the profile's, 0.005)")
        parser.add_argument("--prefix", default="sim", help="account names are PREFIX-PROFILE-N (default sim)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--log", help="write the clients' log here (JSON lines)")
        parser.add_argument("--json", dest="json_out", help="write the summary here as JSON")

    def handle(self, *args, annotators, duration, base_url, gold, pace, think, batches, profiles, prefix, seed,
               log, json_out, skip_rate, abandon_rate, **options):
        if annotators < 1 or duration <= 0:
            raise CommandError("--annotators must be at least 1 and --duration above 0.")
        rates = {name: value for name, value in (("skip_rate", skip_rate), ("abandon_rate", abandon_rate))
                 if value is not None}
        if any(not 0 <= value <= 1 for value in rates.values()) or sum(rates.values()) > 1:
            raise CommandError("--skip-rate and --abandon-rate are shares: each within 0 to 1, together at most 1.")
        try:
            mix = simulation.parse_mix(profiles)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        gold_fn = get_gold(gold)
        found = AnnotationBatch.objects.filter(status=AnnotationBatch.Status.OPEN).order_by("pk")
        if batches:
            found = AnnotationBatch.objects.filter(pk__in=batches).order_by("pk")
            missing = sorted(set(batches) - {b.pk for b in found})
            if missing:
                raise CommandError(f"No batch {', '.join(map(str, missing))}.")
        found = list(found)
        if not found:
            raise CommandError("No open batch to annotate: create one, or name one with --batch.")
        profiled = [dataclasses.replace(p, **rates) for p in simulation.assign_profiles(annotators, mix)]
        names = [f"{prefix}-{p.name}-{i + 1:03d}" for i, p in enumerate(profiled)]
        people = services.ensure_simulated_annotators(names, found)
        issued = [tokens.create_token(person) for person in people]
        accounts = [(name, token, profile) for name, (_, token), profile in zip(names, issued, profiled, strict=True)]
        self.stdout.write(f"{annotators} simulated annotators ({', '.join(f'{k} {v:.0%}' for k, v in mix.items())}) "
                          f"on {', '.join(b.name for b in found)}; gold {gold}; {pace} pace; {duration:g} s "
                          f"against {base_url}")
        bar = tqdm(total=None, unit="label", desc="labels", file=sys.stderr, disable=None)

        def progress(done, _elapsed):
            bar.update(done - bar.n)

        try:
            run_log, summary = simulation.run_annotators(
                accounts, base_url=base_url, batches={b.pk: b.is_safety for b in found}, gold=gold_fn,
                duration=duration, think=think if pace == "human" else 0.0, seed=seed, progress=progress)
        finally:
            bar.close()
            connection.close()  # the database may have restarted during the run: a fresh connection
            for token, _ in issued:  # the tokens die with the run
                token.delete()
        if log:
            run_log.write(log)
        summary["profiles"] = {name: profile.name for name, _, profile in accounts}
        if json_out:
            with open(json_out, "w", encoding="utf-8") as out:
                json.dump(summary, out, indent=2)
        self._print(summary, log)

    def _print(self, s, log_path):
        self.stdout.write(f"{s['labels']} labels in {s['seconds']:.1f} s ({s['labels_per_second'] or 0:.1f}/s), "
                          f"{s['skips']} skipped, {s['abandoned']} walked away, "
                          f"{s['labels_unacknowledged']} not acknowledged")
        for action, r in s["requests"].items():
            if r["requests"]:
                ms = "  ".join(f"{q} {r[q + '_ms']:.0f} ms" if r[q + "_ms"] is not None else f"{q} -"
                               for q in ("p50", "p95", "p99"))
                self.stdout.write(f"  {action:<7} {r['requests']:>6} requests  {ms}  statuses {r['statuses']}")
        errors = s["server_errors"] + s["connection_errors"]
        line = f"server errors (5xx): {s['server_errors']}, connection errors: {s['connection_errors']}"
        self.stdout.write(self.style.WARNING(line) if errors else line)
        if log_path:
            self.stdout.write(f"clients' log: {log_path}")
