"""Evaluate a reward model on a TRL-format file or on an export preset's held-out split (Llama 2 Tables 7, 8).

    python manage.py evaluate_reward_model reward-safety-run-3 --data safety-rm --json report.json
    python manage.py evaluate_reward_model ~/models/rm --data test.jsonl

CHECKPOINT is a registered checkpoint (name or id) or a model directory. ``--data`` names a file, or a preset
(``helpfulness-rm``, ``safety-rm``), whose ``split=test`` rows are exported and evaluated. With ``--json`` the
report is written there and the calibration plot beside it (same name, ``.png``).
"""

import json
import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from rlhf import exports
from rlhf.reward_reports import as_text
from rlhf.reward_scoring import resolve_checkpoint


class Command(BaseCommand):
    help = "Accuracy per preference strength and per source, safety precision/recall at 0.15, calibration."

    def add_arguments(self, parser):
        parser.add_argument("checkpoint", help="registered checkpoint name or id, or a model directory")
        parser.add_argument("--data", required=True,
                            help=f"a JSONL/Parquet file or a preset ({', '.join(exports.PRESETS)})")
        parser.add_argument("--json", dest="json_out", help="write the report here (and the plot as .png beside it)")
        parser.add_argument("--max-length", type=int, default=1024, help="tokens per sequence (default 1024)")
        parser.add_argument("--batch-size", type=int, default=16)

    def handle(self, *args, **options):
        from models_core.reward_data import DataError, load_pairs
        from models_core.reward_eval import evaluate, write_calibration_png

        try:
            _, path = resolve_checkpoint(options["checkpoint"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        out = Path(options["json_out"]) if options["json_out"] else None
        if out is not None and not out.parent.is_dir():
            raise CommandError(f"--json: the folder {out.parent} does not exist.")
        data = options["data"]
        try:
            if data in exports.PRESETS:
                with tempfile.TemporaryDirectory() as tmp:
                    file = Path(tmp) / "test.jsonl"
                    exports.write_export(exports.ExportOptions(preset=data, split="test"), "jsonl", file)
                    pairs = load_pairs(file)
            elif Path(data).is_file():
                pairs = load_pairs(data)
            else:
                raise CommandError(f"--data: {data!r} is neither a file nor a preset ({', '.join(exports.PRESETS)}).")
        except DataError as exc:
            raise CommandError(f"--data: {exc}") from exc
        if not pairs:
            raise CommandError(f"--data: {data} has no pairs to evaluate.")
        report = evaluate(path, pairs, batch_size=options["batch_size"], max_length=options["max_length"])
        self.stdout.write(as_text(report))
        if out is not None:
            out.write_text(json.dumps(report, indent=1))
            write_calibration_png(report, out.with_suffix(".png"))
            self.stdout.write(f"Wrote {out} and {out.with_suffix('.png')}.")
