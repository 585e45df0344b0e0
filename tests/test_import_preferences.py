"""Preference imports: Anthropic HH-RLHF and TRL rows become imported comparisons, all or nothing, once."""

import gzip
import io
import json
from datetime import timedelta
from itertools import islice
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from annotation.imports import ImportResult, import_preferences, preference_hash
from annotation.models import AnnotationBatch, Comparison, ComparisonTask, Dialogue, Focus, Response, Turn
from annotation.transcripts import TranscriptError, UnusablePair, split_preference_pair
from tests.factories import BatchFactory

pytestmark = pytest.mark.django_db

HH_DEV = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "hh_rlhf_harmless_base_dev.jsonl.gz"


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode())


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def row_counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (AnnotationBatch, Dialogue, Turn, Response, ComparisonTask, Comparison))


def only_valid_hh_lines(lines) -> list[str]:
    """The real file has a few unusable rows (an empty final response); the importer refuses them, so the
    real-data test keeps the others."""
    kept = []
    for line in lines:
        row = json.loads(line)
        try:
            split_preference_pair(row["chosen"], row["rejected"])
        except (TranscriptError, UnusablePair):
            continue
        kept.append(line)
    return kept


def test_real_hh_rlhf_rows_become_imported_comparisons_in_a_closed_batch(tmp_path):
    with gzip.open(HH_DEV, "rt", encoding="utf-8") as fh:
        lines = only_valid_hh_lines(islice(fh, 200))
    assert len(lines) == 199  # line 53's chosen response is empty
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(lines), encoding="utf-8")

    with path.open("rb") as fh:
        result = import_preferences(fh, fmt="hh-rlhf", source="anthropic-hh-rlhf-harmless", focus=Focus.SAFETY)

    assert result == ImportResult(created=199, skipped=0, lines=199, batches=("Imported: anthropic-hh-rlhf-harmless",))
    batch = AnnotationBatch.objects.get(name="Imported: anthropic-hh-rlhf-harmless")
    assert (batch.status, batch.focus, batch.heldout_count) == (
        AnnotationBatch.Status.CLOSED, Focus.SAFETY, settings.LADDER_HELDOUT_PER_BATCH)
    comparisons = Comparison.objects.filter(task__batch=batch)
    assert comparisons.count() == 199
    assert set(comparisons.values_list("annotator", "source", "chosen", "strength")) == {
        (None, "anthropic-hh-rlhf-harmless", "A", "")}
    assert not Dialogue.objects.filter(batch=batch, is_safety=False).exists()

    first = json.loads(lines[0])
    prefix, chosen, rejected = (lambda p: (list(p.prefix), p.chosen, p.rejected))(
        split_preference_pair(first["chosen"], first["rejected"]))
    task = ComparisonTask.objects.filter(batch=batch).order_by("id").first()
    assert (task.status, task.shown_order, task.turn_index) == ("complete", "AB", len(prefix))
    assert list(task.dialogue.turns.order_by("index").values_list("role", "content")) == prefix
    assert (task.response_a.text, task.response_b.text) == (chosen, rejected)
    assert (task.response_a.slot, task.response_a.generator) == ("A", "anthropic-hh-rlhf-harmless")
    comparison = task.comparisons.get()
    assert comparison.import_hash == preference_hash(prefix, chosen, rejected, "anthropic-hh-rlhf-harmless")
    assert comparison.time_on_task == timedelta(0)
    assert comparison.chosen_response == task.response_a


def test_the_real_file_as_it_is_fails_at_its_row_with_an_empty_response_and_writes_nothing():
    with gzip.open(HH_DEV, "rb") as fh, pytest.raises(ValidationError) as excinfo:
        import_preferences(fh, fmt="hh-rlhf", source="anthropic-hh-rlhf-harmless")
    assert excinfo.value.messages == ["line 53: the chosen response is empty (empty-response)"]
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_a_multi_turn_hh_row_keeps_its_history_as_the_dialogue_prefix():
    chosen = hh("Hi", "Hello! How can I help?", "Tell me a joke.", "Why did the chicken cross the road?")
    rejected = hh("Hi", "Hello! How can I help?", "Tell me a joke.", "No.")
    import_preferences(jsonl({"chosen": chosen, "rejected": rejected}), fmt="hh-rlhf", source="hh")

    task = ComparisonTask.objects.get()
    assert list(task.dialogue.turns.order_by("index").values_list("index", "role", "content")) == [
        (0, "user", "Hi"), (1, "assistant", "Hello! How can I help?"), (2, "user", "Tell me a joke.")]
    assert task.turn_index == 3
    assert list(Response.objects.order_by("slot").values_list("slot", "turn_index", "text")) == [
        ("A", 3, "Why did the chicken cross the road?"), ("B", 3, "No.")]


def test_re_importing_the_same_rows_adds_nothing_and_repeats_in_one_file_count_once():
    rows = [{"chosen": hh(f"Q{i}", f"good {i}"), "rejected": hh(f"Q{i}", f"bad {i}")} for i in range(4)]
    assert import_preferences(jsonl(*rows, rows[0]), fmt="hh-rlhf", source="hh") == ImportResult(
        4, 1, 5, batches=("Imported: hh",))
    counts = row_counts()
    assert import_preferences(jsonl(*rows), fmt="hh-rlhf", source="hh") == ImportResult(
        0, 4, 4, batches=("Imported: hh",))
    assert row_counts() == counts == (1, 4, 4, 8, 4, 4)


def test_the_same_pair_from_another_source_is_another_comparison():
    row = {"chosen": hh("Q", "good"), "rejected": hh("Q", "bad")}
    import_preferences(jsonl(row), fmt="hh-rlhf", source="one")
    assert import_preferences(jsonl(row), fmt="hh-rlhf", source="two") == ImportResult(
        1, 0, 1, batches=("Imported: two",))
    assert set(Comparison.objects.values_list("source", flat=True)) == {"one", "two"}


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"chosen": hh("Q", "")[:-1], "rejected": hh("Q", "fine")},
         "line 2: the chosen response is empty (empty-response)"),
        ({"chosen": hh("Q", "fine"), "rejected": hh("Q", "  ")}, "line 2: the rejected response is empty"),
        ({"chosen": hh("Q", "same"), "rejected": hh("Q", "same")},
         "line 2: the chosen and rejected responses are the same text (identical-responses)"),
        ({"rejected": hh("Q", "x")}, "line 2: 'chosen' is missing"),
        ({"chosen": hh("Q", "x"), "rejected": 3}, "line 2: 'rejected' must be a transcript string"),
        ({"chosen": "no transcript", "rejected": hh("Q", "x")}, "line 2: a transcript must start with"),
        ({"chosen": hh("A", "x"), "rejected": hh("B", "y")},
         "line 2: chosen and rejected differ before the last turn (differing-dialogues)"),
        ({"chosen": hh("Q", "x", "more?"), "rejected": hh("Q", "y")},
         "line 2: the chosen transcript ends with a Human turn: there is no response (no-response)"),
        ({"chosen": hh("", "x"), "rejected": hh("", "y")}, "line 2: turn 1 of the dialogue is empty (empty-turn)"),
        ('{"chosen": ', "line 2: not valid JSON"),
    ],
)
def test_a_bad_hh_row_names_its_line_and_the_import_writes_nothing(bad_row, message):
    good = [{"chosen": hh(f"Q{i}", "good"), "rejected": hh(f"Q{i}", "bad")} for i in range(3)]
    with pytest.raises(ValidationError) as excinfo:
        import_preferences(jsonl(good[0], bad_row, good[1], good[2]), fmt="hh-rlhf", source="hh")
    assert excinfo.value.messages[0].startswith(message)
    assert row_counts() == (0, 0, 0, 0, 0, 0)  # not even the imported batch


def test_a_bad_row_after_written_chunks_rolls_back_every_chunk():
    rows = [{"chosen": hh(f"Q{i}", "good"), "rejected": hh(f"Q{i}", "bad")} for i in range(2300)]
    rows[2250] = {"chosen": hh("Q", "same"), "rejected": hh("Q", "same")}
    with pytest.raises(ValidationError, match="line 2251: "):
        import_preferences(jsonl(*rows), fmt="hh-rlhf", source="hh")
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_trl_standard_rows_have_string_prompt_and_responses():
    row = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    assert import_preferences(jsonl(row), fmt="trl", source="trl-std") == ImportResult(
        1, 0, 1, batches=("Imported: trl-std",))
    task = ComparisonTask.objects.get()
    assert list(task.dialogue.turns.values_list("role", "content")) == [("user", "The sky is")]
    assert (task.response_a.text, task.response_b.text) == ("blue.", "green.")


def test_trl_conversational_rows_keep_the_whole_prompt_dialogue():
    row = {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "What color is the sky?"}],
        "chosen": [{"role": "assistant", "content": "It is blue."}],
        "rejected": [{"role": "assistant", "content": "It is green."}],
    }
    import_preferences(jsonl(row), fmt="trl", source="trl-conv")
    task = ComparisonTask.objects.get()
    assert list(task.dialogue.turns.order_by("index").values_list("role", "content")) == [
        ("user", "Hi"), ("assistant", "Hello"), ("user", "What color is the sky?")]
    assert (task.turn_index, task.response_a.text, task.response_b.text) == (3, "It is blue.", "It is green.")


def test_trl_implicit_prompt_rows_split_off_their_shared_history():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "Sky color?"}]
    row = {"chosen": [*history, {"role": "assistant", "content": "Blue."}],
           "rejected": [*history, {"role": "assistant", "content": "Green."}]}
    import_preferences(jsonl(row), fmt="trl", source="trl-implicit")
    task = ComparisonTask.objects.get()
    assert list(task.dialogue.turns.order_by("index").values_list("role", "content")) == [
        ("user", "Hi"), ("assistant", "Hello"), ("user", "Sky color?")]
    assert (task.response_a.text, task.response_b.text) == ("Blue.", "Green.")


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"chosen": "blue", "rejected": "green"}, "line 1: 'prompt' is missing"),
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "line 1: the chosen and rejected responses are"),
        ({"prompt": [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Q"}],
          "chosen": "a", "rejected": "b"}, "line 1: 'prompt' message 1 has role 'system' where 'user'"),
        ({"prompt": "Q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
          "rejected": "c"}, "line 1: 'chosen' must be one assistant message"),
        ({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "b"}]},
         "line 1: chosen and rejected differ before the last message (differing-dialogues)"),
        ({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "b"}]},
         "line 1: the rejected conversation does not end with an assistant message (no-response)"),
        ({"chosen": [{"role": "user", "content": "Q"}], "rejected": [{"role": "user", "content": "Q"}]},
         "line 1: chosen and rejected are the same conversation"),
        ({"prompt": "Q", "chosen": [{"content": "a"}], "rejected": "b"},
         "line 1: 'chosen' message 1 must be an object with a string 'role' and 'content'"),
    ],
)
def test_a_bad_trl_row_names_its_line_and_writes_nothing(bad_row, message):
    with pytest.raises(ValidationError) as excinfo:
        import_preferences(jsonl(bad_row), fmt="trl", source="trl")
    assert excinfo.value.messages[0].startswith(message)
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_rows_go_into_a_given_batch_with_its_focus():
    batch = BatchFactory(focus=Focus.SAFETY)
    row = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    import_preferences(jsonl(row), fmt="trl", source="trl", batch=batch)
    assert ComparisonTask.objects.get().batch == batch
    assert Dialogue.objects.get().is_safety
    with pytest.raises(ValidationError, match="is a safety batch"):
        import_preferences(jsonl(row), fmt="trl", source="trl", batch=batch, focus=Focus.HELPFULNESS)


def test_an_existing_imported_batch_is_reused_and_keeps_its_focus():
    import_preferences(jsonl({"prompt": "Q1", "chosen": "a", "rejected": "b"}), fmt="trl", source="s")
    import_preferences(jsonl({"prompt": "Q2", "chosen": "a", "rejected": "b"}), fmt="trl", source="s")
    batch = AnnotationBatch.objects.get()
    assert (batch.name, batch.focus, batch.tasks.count()) == ("Imported: s", Focus.HELPFULNESS, 2)
    with pytest.raises(ValidationError, match="already exists as a helpfulness batch"):
        import_preferences(jsonl({"prompt": "Q3", "chosen": "a", "rejected": "b"}), fmt="trl", source="s",
                           focus=Focus.SAFETY)


def test_the_source_ladder_is_reserved_for_labels_made_here():
    with pytest.raises(ValidationError, match="'ladder' names labels made here"):
        import_preferences(jsonl({"prompt": "Q", "chosen": "a", "rejected": "b"}), fmt="trl", source="ladder")


def test_the_command_imports_gzip_and_prints_a_summary(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(1500):
            fh.write(json.dumps({"chosen": hh(f"Q{i}", "good"), "rejected": hh(f"Q{i}", "bad")}) + "\n")
    out = io.StringIO()
    call_command("import_preferences", str(path), format="hh-rlhf", source="hh", focus="safety", stdout=out,
                 verbosity=0)
    assert out.getvalue().strip() == (
        f"Imported 1,500 comparisons (0 already present) from 1,500 rows of {path} into batch 'Imported: hh'.")
    out = io.StringIO()
    call_command("import_preferences", str(path), format="hh-rlhf", source="hh", stdout=out, verbosity=0)
    assert "Imported 0 comparisons (1,500 already present)" in out.getvalue()
    assert Comparison.objects.filter(task__batch__focus=Focus.SAFETY).count() == 1500


def test_the_command_fails_naming_the_line_and_writes_nothing(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"chosen": hh("Q", "good"), "rejected": hh("Q", "bad")}) + "\n"
        + json.dumps({"chosen": hh("Q2", "same"), "rejected": hh("Q2", "same")}) + "\n"
    )
    with pytest.raises(CommandError, match=r"line 2: the chosen and rejected responses are the same text"):
        call_command("import_preferences", str(path), format="hh-rlhf", source="hh", verbosity=0)
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_the_command_refuses_a_file_that_is_not_there(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_preferences", str(tmp_path / "missing.jsonl"), format="trl", source="x", verbosity=0)


def test_an_import_leaves_the_planner_statistics_fresh_for_the_export_that_follows():
    # Found with the README's reward-model demo: right after a large import the tables still looked empty to the
    # planner (never analyzed), and the export's held-out split took minutes in nested loops.
    from django.db import connection

    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(300)]
    import_preferences(jsonl(*rows), fmt="trl", source="stats-test")
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, reltuples FROM pg_class WHERE relname IN "
                       "('annotation_comparison', 'annotation_comparisontask', 'annotation_response')")
        estimates = dict(cursor.fetchall())
    assert estimates["annotation_comparison"] >= 300
    assert estimates["annotation_comparisontask"] >= 300
    assert estimates["annotation_response"] >= 600
