"""Factories for the annotation models. They write through the ORM directly: they set up state for
tests, the code under test still goes through the services."""

import factory
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import AnnotationBatch, Focus


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"annotator{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class BatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AnnotationBatch
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Batch {n}")
    focus = Focus.HELPFULNESS
    guidelines = "Choose the more helpful response."

    @factory.post_generation
    def annotators(obj, create, extracted, **kwargs):
        if create and extracted:
            obj.annotators.add(*extracted)


def make_pairs(batch, n, *, texts=None, turns=None):
    """``n`` ready queue-mode tasks in ``batch`` (through the real service)."""
    pairs = [
        services.PairInput(
            turns=turns or [("user", f"Question number {i}?")],
            response_a=(texts or {}).get("a", f"Answer A to {i}"),
            response_b=(texts or {}).get("b", f"Answer B to {i}"),
            source="test",
            is_safety=batch.is_safety,
        )
        for i in range(n)
    ]
    return services.create_queue_pairs(batch, pairs)
