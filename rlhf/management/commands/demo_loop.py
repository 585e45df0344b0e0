"""The closed-loop demo (``make demo-loop``): rounds RLHF-V1 to V3 from an empty database with simulated
annotators, then a report (markdown and PNGs). Every ``DemoLoopConfig`` field is an option.

    python manage.py demo_loop --out /tmp/loop --rounds 2 --eval-prompts 24
"""

import json
import shutil
from dataclasses import fields
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from rlhf.demo_loop import DemoLoopConfig, run_demo_loop


class Command(BaseCommand):
    help = "Run the closed RLHF loop V0 -> V3 with simulated annotators and write its report."

    def add_arguments(self, parser):
        parser.add_argument("--out", default=None,
                            help="report folder (default .local/demo-loop/<timestamp>/)")
        parser.add_argument("--migrate", action="store_true", help="migrate the database first")
        parser.add_argument("--keep-checkpoints", action="store_true",
                            help="keep the rounds' checkpoints under the report folder (about 11 GB; by default "
                                 "they are removed when the report is written)")
        defaults = DemoLoopConfig()
        for f in fields(DemoLoopConfig):
            default = getattr(defaults, f.name)
            option = "--" + f.name.replace("_", "-")
            kind = {bool: None, int: int, float: float, str: str}.get(type(default), json.loads)
            text = f"{f.metadata.get('help', '')} (default {json.dumps(default)})".replace("%", "%%")
            parser.add_argument(option, dest=f"cfg_{f.name}", type=kind, default=None, help=text)

    def handle(self, *args, **options):
        values = {f.name: options[f"cfg_{f.name}"] for f in fields(DemoLoopConfig)
                  if options[f"cfg_{f.name}"] is not None}
        try:
            config = DemoLoopConfig(**{**DemoLoopConfig().to_dict(), **values})
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if options["migrate"]:
            call_command("migrate", "--noinput", verbosity=0)
        out = Path(options["out"] or Path(settings.BASE_DIR) / ".local" / "demo-loop"
                   / timezone.now().strftime("%Y%m%d-%H%M%S"))
        # Every run writes its rounds' checkpoints beside its report: round folders are named by round number
        # (rlhf-v1, ...) and resume what they find, so a second run from an empty database must not find the
        # first one's. V0's conversion is kept in the usual place and reused.
        if not config.policy_dir:
            config.policy_dir = str(Path(settings.LADDER_CHECKPOINT_DIR).resolve() / "smollm2-135m-instruct")
        settings.LADDER_CHECKPOINT_DIR = str(out.resolve() / "checkpoints")
        self.stdout.write(f"Closed-loop demo; the report goes to {out}")
        run_demo_loop(config, out, write=lambda line: (self.stdout.write(line), self.stdout.flush()))
        kept = out / "checkpoints"
        if not options["keep_checkpoints"] and kept.exists():
            size = sum(f.stat().st_size for f in kept.rglob("*") if f.is_file())
            shutil.rmtree(kept)
            self.stdout.write(f"Removed the rounds' checkpoints ({size / 2**30:.1f} GB; --keep-checkpoints keeps "
                              f"them); the report is in {out}")
