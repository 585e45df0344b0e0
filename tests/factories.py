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


_BULK_SQL = """
WITH d AS (
    INSERT INTO annotation_dialogue (batch_id, source, is_safety, risk_category, attack_vector, created_at)
    SELECT %(batch)s, 'bulk', false, '', '', %(created)s FROM generate_series(1, %(n)s)
    RETURNING id, CASE WHEN mod(id, 3) = 0 THEN 3 ELSE 1 END AS k
),
turns AS (
    INSERT INTO annotation_turn (dialogue_id, index, role, content)
    SELECT d.id, i.i, CASE WHEN mod(i.i, 2) = 0 THEN 'user' ELSE 'assistant' END,
           left(repeat('Turn ' || i.i || ' of dialogue ' || d.id || ', with some words in it. ', 40),
                %(prompt_chars)s)
    FROM d CROSS JOIN LATERAL generate_series(0, d.k - 1) AS i(i)
),
ra AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, temperature, checkpoint_id,
                                     created_at)
    SELECT d.id, d.k, 'A', left(repeat('Response A to ' || d.id || ', a helpful and careful answer. ', 80),
                               %(response_chars)s), 'bulk', 0.7, %(checkpoint_a)s, %(created)s
    FROM d RETURNING id, dialogue_id, turn_index
),
rb AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, temperature, checkpoint_id,
                                     created_at)
    SELECT d.id, d.k, 'B', left(repeat('Response B to ' || d.id || ', another answer here. ', 80),
                               %(response_chars)s), 'bulk', 1.0, %(checkpoint_b)s, %(created)s
    FROM d RETURNING id, dialogue_id
),
t AS (
    INSERT INTO annotation_comparisontask (batch_id, dialogue_id, turn_index, response_a_id, response_b_id,
                                           shown_order, status, error, note, generation_attempts, created_at)
    SELECT %(batch)s, ra.dialogue_id, ra.turn_index, ra.id, rb.id, 'AB', %(status)s, '', '', 0, %(created)s
    FROM ra JOIN rb USING (dialogue_id)
    RETURNING id
)
INSERT INTO annotation_comparison (task_id, batch_id, annotator_id, source, chosen, strength, safety_category,
                                   note, time_on_task, created_at, updated_at)
SELECT t.id, %(batch)s, a.id, %(source)s, CASE WHEN mod(t.id + coalesce(a.id, 0), 2) = 0 THEN 'A' ELSE 'B' END,
       CASE WHEN a.id IS NULL THEN ''
            ELSE (ARRAY['significantly_better', 'better', 'slightly_better', 'negligibly_better'])[
                     1 + mod(t.id + a.id, 4)]
       END,
       '', '', interval '30 seconds', %(created)s, %(created)s
FROM t CROSS JOIN unnest(%(annotators)s::bigint[]) AS a(id)
"""


def bulk_comparisons(batch, tasks, *, annotators=(None,), source=None, checkpoints=(None, None), created=None,
                     prompt_chars=150, response_chars=600) -> int:
    """``tasks`` labelled tasks in ``batch``, each with one comparison per annotator, in one SQL statement
    (for volume tests and benchmarks; the rows are those the services would write). Every third dialogue
    has three turns. An annotator ``None`` makes imported rows (``source`` required, no strength).
    Returns the number of comparisons."""
    from django.db import connection
    from django.utils import timezone

    if None in annotators and not source:
        raise ValueError("imported comparisons need a source")
    params = {
        "batch": batch.pk, "n": tasks, "annotators": [getattr(a, "pk", None) for a in annotators],
        "source": source or "ladder", "created": created or timezone.now(), "prompt_chars": prompt_chars,
        "response_chars": response_chars, "checkpoint_a": getattr(checkpoints[0], "pk", None),
        "checkpoint_b": getattr(checkpoints[1], "pk", None),
        # What the submits would have left: a task with its labels (or an imported one) is out of the queue.
        "status": "complete" if None in annotators or len(annotators) >= batch.overlap else "ready",
    }
    with connection.cursor() as cursor:
        cursor.execute(_BULK_SQL, params)
        return cursor.rowcount
