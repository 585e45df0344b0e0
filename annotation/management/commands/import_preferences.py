"""Import an open preference dataset (Anthropic HH-RLHF, TRL or PKU-SafeRLHF JSONL, optionally
gzip-compressed, or '-' for stdin) as labelled comparisons."""

import zlib

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation import imports
from annotation.management.inputs import RejectsFile, check_text_arguments, open_import_file, shown_path
from annotation.models import AnnotationBatch, Focus

SKIP_HINT = (
    "rows that cannot be a comparison are refused; pass --skip-invalid to leave them out and list them "
    "in a rejects file"
)


class Command(BaseCommand):
    help = (
        "Import preference pairs as comparisons (no annotator, strength unknown), all or nothing. Without "
        "--batch they go to a closed batch named 'Imported: SOURCE' (pku-saferlhf: 'Imported: SOURCE "
        "(helpfulness)' and 'Imported: SOURCE (safety)'). Rows already imported are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="A JSONL file, optionally .gz; '-' reads stdin.")
        parser.add_argument("--format", choices=imports.PREFERENCE_FORMATS, required=True)
        parser.add_argument("--source", required=True, help="The dataset's name, e.g. anthropic-hh-rlhf-harmless.")
        parser.add_argument("--batch", type=int, help="Import into this batch instead.")
        parser.add_argument(
            "--focus", choices=Focus.values,
            help="Focus of the imported batch (default helpfulness); for pku-saferlhf, import only that side.",
        )
        parser.add_argument(
            "--skip-invalid", action="store_true",
            help="Leave out rows that are well-formed but cannot be a comparison (dialogues that differ before "
                 "the last turn, an empty turn or response, identical responses), counted by reason and "
                 "written to the rejects file. Malformed input still fails the whole import.",
        )
        parser.add_argument(
            "--rejects", metavar="PATH",
            help="Where --skip-invalid writes the rows it leaves out (default: FILE.rejects.jsonl beside the "
                 "input; required when reading stdin).",
        )

    def handle(self, *args, **options):
        check_text_arguments(options, ("source",))
        path = options["file"]
        shown = shown_path(path)
        if options["rejects"] and not options["skip_invalid"]:
            raise CommandError("--rejects names where --skip-invalid writes the rows it leaves out; pass both.")
        batch = None
        if options["batch"] is not None:
            batch = AnnotationBatch.objects.filter(pk=options["batch"]).first()
            if batch is None:
                raise CommandError(f"There is no batch with id {options['batch']}.")
        rejects = None
        if options["skip_invalid"]:
            if path == "-" and not options["rejects"]:
                raise CommandError("Reading stdin with --skip-invalid: name the rejects file with --rejects PATH.")
            rejects = RejectsFile(options["rejects"] or f"{path}.rejects.jsonl")
        try:
            result = self._import(path, options, batch, rejects)
        except BaseException:
            if rejects is not None:
                rejects.discard()
            raise
        if rejects is not None:
            rejects.commit()
        self._summary(result, shown, batch, rejects)

    def _import(self, path, options, batch, rejects) -> imports.ImportResult:
        shown = shown_path(path)
        try:
            with open_import_file(path, show_progress=options["verbosity"] > 0) as (stream, progress):
                return imports.import_preferences(
                    stream, fmt=options["format"], source=options["source"], batch=batch,
                    focus=options["focus"], progress=progress, skip_invalid=options["skip_invalid"],
                    on_reject=rejects.write if rejects is not None else None,
                )
        except ValidationError as exc:
            message = " ".join(exc.messages)
            if getattr(exc, "code", None) == imports.UNUSABLE:
                message = f"{message}; {SKIP_HINT}"
            raise CommandError(f"{shown}: {message} (nothing was imported)") from exc
        except (OSError, EOFError, zlib.error) as exc:
            raise CommandError(f"{shown}: {exc} (nothing was imported)") from exc

    def _summary(self, result, shown, batch, rejects) -> None:
        names = result.batches or ((batch.name,) if batch is not None else ())
        where = f"batch {names[0]!r}" if len(names) == 1 else (
            f"batches {', '.join(map(repr, names))}" if names else "no batch")
        self.stdout.write(
            f"Imported {result.created:,} comparisons ({result.skipped:,} already present) from {result.lines:,} "
            f"rows of {shown} into {where}."
        )
        if rejects is not None:
            left_out = sum(result.rejected.values())
            counts = ", ".join(f"{reason} {n:,}" for reason, n in result.rejected.items()) or "none"
            self.stdout.write(
                f"Left out {left_out:,} rows that cannot be a comparison ({counts}); "
                f"listed in {shown_path(str(rejects.path))}."
            )
