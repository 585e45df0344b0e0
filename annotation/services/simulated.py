"""Accounts for simulated annotators (``simulate_annotators``): plain annotator users, no password, named
``<prefix>-<profile>-<n>`` so that their profile shows in every page and export, on the batches given."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation.models import AnnotationBatch


def ensure_simulated_annotators(names: list[str], batches: list[AnnotationBatch]) -> list:
    """The users with these names (created without a usable password where missing; idempotent), each made an
    annotator of every batch given."""
    users = get_user_model()
    with transaction.atomic():
        existing = {u.get_username(): u for u in users.objects.filter(username__in=names)}
        for name in names:
            if name not in existing:
                user = users(username=name)
                user.set_unusable_password()
                user.save()
                existing[name] = user
        people = [existing[name] for name in names]
        for batch in batches:
            batch.annotators.add(*people)
    return people
