"""Seeding for the benchmarks: ``n`` ready comparison tasks (a dialogue, its user turn, two responses, the task)
in one batch, with ``INSERT ... SELECT`` over ``generate_series`` (seconds for 100,000 tasks, where the ORM takes
minutes). Used by ``assignment.py`` and ``annotate_load.py``, each in a database of its own (``own_database``)."""

import contextlib

SEED_TASKS_SQL = """
WITH d AS (
    INSERT INTO annotation_dialogue (batch_id, source, is_safety, risk_category, attack_vector, created_at)
    SELECT %(batch)s, 'bench', false, '', '', now() FROM generate_series(1, %(n)s)
    RETURNING id
),
turns AS (
    INSERT INTO annotation_turn (dialogue_id, index, role, content)
    SELECT d.id, 0, 'user', 'Question ' || d.id || ': how do I keep a sourdough starter alive?' FROM d
),
ra AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, created_at)
    SELECT d.id, 1, 'A', 'Feed it flour and water every day, answer A to ' || d.id, 'bench', now() FROM d
    RETURNING id, dialogue_id
),
rb AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, created_at)
    SELECT d.id, 1, 'B', 'Keep it in the fridge and feed it weekly, answer B to ' || d.id, 'bench', now() FROM d
    RETURNING id, dialogue_id
)
INSERT INTO annotation_comparisontask (batch_id, dialogue_id, turn_index, response_a_id, response_b_id,
                                       shown_order, status, error, note, generation_attempts, created_at)
SELECT %(batch)s, ra.dialogue_id, 1, ra.id, rb.id, CASE WHEN mod(ra.dialogue_id, 2) = 0 THEN 'AB' ELSE 'BA' END,
       'ready', '', '', 0, now()
FROM ra JOIN rb USING (dialogue_id)
ORDER BY ra.dialogue_id
"""


def seed_ready_tasks(cursor, batch_id: int, n: int) -> None:
    """``n`` ready tasks in batch ``batch_id`` (half shown A left, half B left)."""
    cursor.execute(SEED_TASKS_SQL, {"batch": batch_id, "n": n})


@contextlib.contextmanager
def own_database():
    """Django set up on a fresh ``test_<name>`` database of the configured server, dropped afterwards."""
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        yield connection
    finally:
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)
