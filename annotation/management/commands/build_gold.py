"""Build gold checks for a batch: a response to one of its prompts against a response to an unrelated one."""

from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.models import AnnotationBatch


class Command(BaseCommand):
    help = "Build N gold items for a batch (a response against one for an unrelated prompt of the batch)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, batch, count, seed, **options):
        found = AnnotationBatch.objects.filter(pk=batch).first()
        if found is None:
            raise CommandError(f"No batch {batch}.")
        items = services.build_gold_items(found, count, seed=seed)
        self.stdout.write(f"Built {len(items)} gold items in batch {found.pk}.")
        if len(items) < count:
            self.stdout.write(self.style.WARNING(
                f"Asked for {count}: the batch has too few pairs of tasks with no question in common."))
