"""RLHF rounds from the command line (Llama 2 §3.2.3): create and start one, follow it, retry, cancel, promote.

    python manage.py rlhf_round start --method rejection_sampling            # queued on the training workers
    python manage.py rlhf_round start --method ppo --preset cpu-tiny --inline # runs here, with a progress line
    python manage.py rlhf_round start --config round.json                      # RoundConfig fields (JSON)
    python manage.py rlhf_round status [N]                                     # all rounds, or RLHF-VN in full
    python manage.py rlhf_round retry N | cancel N
    python manage.py rlhf_round promote N --by admin --reason "read the answers; better"
    python manage.py rlhf_round schedule --method rejection_sampling --day monday --hour 2
    python manage.py rlhf_round print-launch --nodes 2 --gpus-per-node 8    # PPO on a cluster (DeepSpeed ZeRO-2)
"""

import json
import sys
import time

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from rlhf import round_reports, rounds
from rlhf.models import RLHFRound
from rlhf.round_config import ROUND_PRESETS


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Create, start, follow, retry, cancel, promote or schedule RLHF rounds (Llama 2 §3.2.3)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        start = sub.add_parser("start", help="create a round and start it")
        start.add_argument("--method", default="rejection_sampling", choices=RLHFRound.Method.values)
        start.add_argument("--preset", choices=ROUND_PRESETS, help="RoundConfig preset (default paper)")
        start.add_argument("--config", help="JSON file of RoundConfig fields (may name a preset)")
        start.add_argument("--inline", action="store_true", help="run the steps here instead of on a worker")
        status = sub.add_parser("status", help="list the rounds, or show one")
        status.add_argument("number", nargs="?", type=int)
        status.add_argument("--json", action="store_true")
        for name in ("retry", "cancel"):
            sub.add_parser(name).add_argument("number", type=int)
        promote = sub.add_parser("promote", help="promote a policy the gate held, with a reason")
        promote.add_argument("number", type=int)
        promote.add_argument("--by", required=True, help="the staff user's name")
        promote.add_argument("--reason", required=True)
        launch = sub.add_parser("print-launch", help="print the multi-GPU PPO command (DeepSpeed ZeRO-2)")
        launch.add_argument("--preset", default="paper", choices=ROUND_PRESETS)
        launch.add_argument("--nodes", type=int, default=1)
        launch.add_argument("--gpus-per-node", type=int, default=8)
        schedule = sub.add_parser("schedule", help="start a round every week (django-celery-beat)")
        schedule.add_argument("--method", default="rejection_sampling", choices=RLHFRound.Method.values)
        schedule.add_argument("--preset", default="paper", choices=ROUND_PRESETS)
        schedule.add_argument("--day", default="monday")
        schedule.add_argument("--hour", default="2")

    def _round(self, number: int) -> RLHFRound:
        found = RLHFRound.objects.filter(number=number).first()
        if found is None:
            raise CommandError(f"No round RLHF-V{number}.")
        return found

    def handle(self, *args, **options):
        try:
            getattr(self, f"_{options['action'].replace('-', '_')}")(options)
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from exc

    def _start(self, options):
        config: dict = {}
        if options["config"]:
            try:
                config = json.loads(open(options["config"]).read())
            except (OSError, ValueError) as exc:
                raise CommandError(f"--config {options['config']}: {exc}") from exc
        if options["preset"]:
            config = {"preset": options["preset"], **config}
        round_ = rounds.create_round(method=options["method"], config=config)
        if options["inline"]:
            rounds._INLINE.active = True  # start_round's message is not sent: the loop below runs the steps
            try:
                rounds.start_round(round_.pk)
            finally:
                rounds._INLINE.active = False
            self.stdout.write(f"{round_.name} started here (Ctrl-C stops it; `rlhf_round retry {round_.number}` "
                              "resumes)")
            self._follow_inline(round_.pk)
        else:
            rounds.start_round(round_.pk)
            self.stdout.write(f"{round_.name} queued on the training workers; follow it at /rounds/{round_.pk}/ "
                              f"or with `manage.py rlhf_round status {round_.number}`")

    def _follow_inline(self, round_id: int) -> None:
        import threading

        done = threading.Event()

        def report():
            while not done.wait(2.0):
                r = RLHFRound.objects.get(pk=round_id)
                p = r.progress or {}
                shown = " ".join(f"{k}={v}" for k, v in p.items() if k in ("phase", "kind", "done", "total", "step",
                                                                            "total_steps", "iteration", "loss"))
                sys.stderr.write(f"\r{r.name} {r.step}: {shown}".ljust(100)[:100])
                sys.stderr.flush()

        thread = threading.Thread(target=report, daemon=True)
        thread.start()
        started = time.monotonic()
        try:
            round_ = rounds.run_inline(round_id)
        except Exception as exc:
            done.set()
            round_ = RLHFRound.objects.get(pk=round_id)
            raise CommandError(f"{round_.name} failed at {round_.failed_step}: {exc}") from exc
        finally:
            done.set()
            sys.stderr.write("\n")
        self.stdout.write(f"{round_.name}: {round_.get_status_display()} after {time.monotonic() - started:.0f} s")
        self._show(round_)

    def _show(self, round_: RLHFRound) -> None:
        for step in round_reports.steps(round_):
            self.stdout.write(f"  {step['label']:<28} {step['state']}")
        for row in round_reports.win_rate_rows(round_):
            self.stdout.write(f"  win rate vs {row['against']}: helpfulness {row['helpfulness']}, safety "
                              f"{row['safety']}, combined {row['combined']} ({row['prompts']} prompts)")
        verdict = round_.metrics.get("promotion")
        if verdict:
            self.stdout.write(f"  gate: {'passed' if verdict['passed'] else 'not passed'} (threshold "
                              f"{verdict['threshold']})")
        if round_.error:
            self.stdout.write(f"  error: {round_.error}")

    def _status(self, options):
        if options["number"] is None:
            for round_ in RLHFRound.objects.order_by("number"):
                self.stdout.write(f"{round_.name:<10} {round_.method:<20} {round_.status:<10} {round_.step:<14} "
                                  f"{getattr(round_.start_policy, 'name', '-')} -> "
                                  f"{getattr(round_.new_policy, 'name', '-')}")
            return
        round_ = self._round(options["number"])
        if options["json"]:
            self.stdout.write(json.dumps(round_reports.payload(round_), default=str, indent=1))
            return
        self.stdout.write(f"{round_.name}: {round_.get_method_display()}, {round_.get_status_display()}")
        self._show(round_)

    def _retry(self, options):
        round_ = self._round(options["number"])
        if not rounds.retry_round(round_.pk):
            raise CommandError(f"{round_.name} is {round_.status}, not failed.")
        self.stdout.write(f"{round_.name} queued again at {round_.failed_step}.")

    def _cancel(self, options):
        round_ = self._round(options["number"])
        if not rounds.cancel_round(round_.pk):
            raise CommandError(f"{round_.name} has already stopped ({round_.status}).")
        self.stdout.write(f"{round_.name}: cancel requested.")

    def _promote(self, options):
        user = get_user_model().objects.filter(username=options["by"]).first()
        if user is None:
            raise CommandError(f"No user {options['by']!r}.")
        round_ = rounds.promote_by_hand(self._round(options["number"]).pk, user, options["reason"])
        self.stdout.write(f"{round_.new_policy.name} is now the current policy ({round_.name}).")

    def _print_launch(self, options):
        from rlhf.launch import print_ppo_launch_command

        files = rounds.prepare_ppo_launch(preset=options["preset"])
        try:
            text = print_ppo_launch_command(
                options["nodes"], options["gpus_per_node"], files["config"], files["prompts"], files["base"],
                files["out"], reward_model=files["reward_model"], safety_reward_model=files["safety_reward_model"],
                heldout_prompts=files["heldout"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"# files in {files['folder']}\n{text}")

    def _schedule(self, options):
        task = rounds.schedule_weekly(method=options["method"], preset=options["preset"], day_of_week=options["day"],
                                      hour=options["hour"])
        self.stdout.write(f"Scheduled: {task.name} (edit it in the admin under Periodic tasks; beat must run).")
