"""Write a preference dataset (TRL's conversational preference format) to a JSONL or Parquet file.

    python manage.py export_preferences --format jsonl --out prefs.jsonl --split train --preset helpfulness-rm

See ``rlhf.exports`` for the columns, the test split and the presets' exact counts.
"""

import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from rlhf import exports


class Command(BaseCommand):
    help = "Export preference comparisons for reward-model training (JSONL or Parquet), streamed from the database."

    def add_arguments(self, parser):
        parser.add_argument("--format", required=True, help=f"one of {', '.join(exports.FORMATS)}")
        parser.add_argument("--out", required=True, help="file to write (replaced only once the export is complete)")
        parser.add_argument("--batches", help="comma-separated batch ids (default: every batch)")
        parser.add_argument("--focus", help="helpfulness or safety (the batch's focus)")
        parser.add_argument("--source", action="append", dest="sources",
                            help="comparison source: 'ladder' or an import name; repeat or comma-separate")
        parser.add_argument("--since", help="ISO 8601 date or datetime, inclusive (naive means TIME_ZONE)")
        parser.add_argument("--until", help="ISO 8601 date or datetime, exclusive")
        parser.add_argument("--split", help="train or test (default: both, with a split column)")
        parser.add_argument("--margin", default="small",
                            help="Table 27 margins: small (1, 2/3, 1/3, 0), large (3, 2, 1, 0) or none (no column)")
        parser.add_argument("--include-flagged", action="store_true",
                            help="keep chosen-unsafe/rejected-safe comparisons (left out by default, paper §3.2.1)")
        parser.add_argument("--preset", help=f"data mix of §3.2.2: {' or '.join(exports.PRESETS)}")
        parser.add_argument("--seed", default="0", help="seed of a preset's sampling (default 0)")
        parser.add_argument("--qa-state", dest="qa_state",
                            help="comma-separated review states to include: pending, approved, corrected "
                                 "(default all three; rejected labels are never exported)")
        parser.add_argument("--min-agreement", dest="min_agreement",
                            help="0 to 1: keep labels whose task's share agreeing with its majority is at least "
                                 "this (a task with one label counts as 1.0)")

    def handle(self, *args, **options):
        fmt = options["format"]
        if fmt not in exports.FORMATS:
            raise CommandError(f"--format must be one of {', '.join(exports.FORMATS)}; got {fmt!r}.")
        out = Path(options["out"])
        if not out.parent.is_dir():
            raise CommandError(f"--out: the folder {out.parent} does not exist.")
        params = {name: options[name] for name in ("batches", "focus", "since", "until", "split", "margin",
                                                   "preset", "seed", "qa_state", "min_agreement")
                  if options[name] is not None}
        if options["sources"]:
            params["sources"] = ",".join(options["sources"])
        if options["include_flagged"]:
            params["include_flagged"] = "true"
        try:
            export_options = exports.ExportOptions.from_params(params)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        started = time.monotonic()
        total = exports.count_rows(export_options)
        # tqdm redraws with "\r", which self.stderr (it ends every write with a newline) would break.
        with tqdm(total=total, unit="rows", unit_scale=True, disable=options["verbosity"] == 0,
                  file=sys.stderr) as bar:
            written = exports.write_export(export_options, fmt, out, progress=bar.update)
        seconds = time.monotonic() - started
        size = out.stat().st_size
        self.stdout.write(
            f"Wrote {written:,} rows ({fmt}, {size / 1e6:,.1f} MB) to {out} in {seconds:.1f} s"
            f" ({written / seconds if seconds else 0:,.0f} rows/s)."
        )
