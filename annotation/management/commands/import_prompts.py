"""Add prompts from a JSONL or CSV file (optionally gzip-compressed, or '-' for stdin) to a batch's pool."""

import zlib

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation import imports
from annotation.management.inputs import check_text_arguments, format_from_name, open_import_file, shown_path
from annotation.models import AnnotationBatch


class Command(BaseCommand):
    help = (
        "Import prompts into a batch's pool, all or nothing. JSONL rows: {\"prompt\": text} or "
        "{\"messages\": [...]}, with optional category, risk_category, is_safety; CSV: the same columns. "
        "Prompts already in the pool are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A .jsonl or .csv file, optionally .gz; '-' reads stdin.")
        parser.add_argument("--batch", type=int, required=True, help="The batch whose pool gets the prompts.")
        parser.add_argument("--format", choices=imports.PROMPT_FORMATS, help="Default: from the file's extension.")
        parser.add_argument("--source", default="import", help="Recorded on each prompt (default: import).")

    def handle(self, *args, **options):
        check_text_arguments(options, ("source",))
        path = options["file"]
        shown = shown_path(path)
        batch = AnnotationBatch.objects.filter(pk=options["batch"]).first()
        if batch is None:
            raise CommandError(f"There is no batch with id {options['batch']}.")
        fmt = options["format"] or format_from_name(path, {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"})
        try:
            with open_import_file(path, show_progress=options["verbosity"] > 0) as (stream, progress):
                result = imports.import_prompts(
                    stream, batch=batch, fmt=fmt, source=options["source"], progress=progress
                )
        except ValidationError as exc:
            raise CommandError(f"{shown}: {' '.join(exc.messages)} (nothing was imported)") from exc
        except (OSError, EOFError, zlib.error) as exc:
            raise CommandError(f"{shown}: {exc} (nothing was imported)") from exc
        self.stdout.write(
            f"Imported {result.created:,} prompts ({result.skipped:,} already present) from {shown} "
            f"into batch {batch.pk} ({batch.name})."
        )
