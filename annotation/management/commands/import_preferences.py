"""Import an open preference dataset (Anthropic HH-RLHF or TRL JSONL, optionally gzip-compressed, or '-' for
stdin) as labelled comparisons."""

import zlib

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation import imports
from annotation.management.inputs import open_import_file
from annotation.models import AnnotationBatch, Focus


class Command(BaseCommand):
    help = (
        "Import preference pairs as comparisons (no annotator, strength unknown), all or nothing. Without "
        "--batch they go to a closed batch named 'Imported: SOURCE'. Rows already imported are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A JSONL file, optionally .gz; '-' reads stdin.")
        parser.add_argument("--format", choices=imports.PREFERENCE_FORMATS, required=True)
        parser.add_argument("--source", required=True, help="The dataset's name, e.g. anthropic-hh-rlhf-harmless.")
        parser.add_argument("--batch", type=int, help="Import into this batch instead.")
        parser.add_argument("--focus", choices=Focus.values, help="Focus of the imported batch (default helpfulness).")

    def handle(self, *args, **options):
        path = options["file"]
        batch = None
        if options["batch"] is not None:
            batch = AnnotationBatch.objects.filter(pk=options["batch"]).first()
            if batch is None:
                raise CommandError(f"There is no batch with id {options['batch']}.")
        try:
            with open_import_file(path, show_progress=options["verbosity"] > 0) as (stream, progress):
                result = imports.import_preferences(
                    stream, fmt=options["format"], source=options["source"], batch=batch,
                    focus=options["focus"], progress=progress,
                )
        except ValidationError as exc:
            raise CommandError(f"{path}: {' '.join(exc.messages)} (nothing was imported)") from exc
        except (OSError, EOFError, zlib.error) as exc:
            raise CommandError(f"{path}: {exc} (nothing was imported)") from exc
        name = batch.name if batch is not None else imports.imported_batch_name(options["source"].strip())
        self.stdout.write(
            f"Imported {result.created:,} comparisons ({result.skipped:,} already present) from {path} "
            f"into batch {name!r}."
        )
