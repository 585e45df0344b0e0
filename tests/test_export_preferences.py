"""Preference exports: TRL's conversational preference rows with the paper's margins, the flagged pairs left
out, a deterministic per-batch test split, the §3.2.2 data mixes, and files that ``datasets`` and an
unmodified ``trl.RewardTrainer`` read."""

import hashlib
import hmac
import json
import math
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import QueryDict
from django.utils import timezone

from annotation import checkpoints, generation, services
from annotation.models import AnnotationBatch, Comparison, Focus, Response
from rlhf import exports
from rlhf.exports import ExportOptions
from tests.factories import BatchFactory, UserFactory, bulk_comparisons, make_pairs

pytestmark = pytest.mark.django_db

HARMLESS = "anthropic-hh-rlhf-harmless"
HELPFUL = "anthropic-hh-rlhf-helpful"
MULTI_TURN = [("user", "Plan a trip to Lisbon."), ("assistant", "Sure: three days, trams and tiles."),
              ("user", "Now make it cheaper.")]


def label_all(user, batch, labels):
    """Claim and label the batch's tasks in order through the services; return the comparisons."""
    comparisons = []
    for label in labels:
        assignment = services.claim_next_task(user, batch.pk, wait_seconds=0)
        comparisons.append(services.submit_comparison(user, assignment.task_id, label).comparison)
    return comparisons


STAND_IN = "deterministic-demo-sampler"


def import_rows(batch, source, chosen):
    """Imported comparisons as an import writes them: no annotator, no strength, a source name."""
    tasks = make_pairs(batch, len(chosen))
    return [Comparison.objects.create(task=task, annotator=None, source=source, chosen=c, strength="",
                                      time_on_task=timedelta(0)) for task, c in zip(tasks, chosen, strict=True)]


@pytest.fixture
def data():
    """Helpfulness (5 labels, one multi-turn), safety (4 labels, one flagged) and imported rows."""
    alice, bob = UserFactory(), UserFactory()
    sft = checkpoints.register_checkpoint(name="sft-v0", path="")
    rlhf_v1 = checkpoints.register_checkpoint(name="rlhf-v1", path="")

    helpfulness = BatchFactory(name="Week 1 helpfulness", annotators=[alice], heldout_count=2)
    tasks = make_pairs(helpfulness, 4) + make_pairs(helpfulness, 1, turns=MULTI_TURN)
    for task in tasks:
        Response.objects.filter(pk=task.response_a_id).update(checkpoint=sft, temperature=0.7, generator=STAND_IN)
        Response.objects.filter(pk=task.response_b_id).update(checkpoint=rlhf_v1, temperature=1.0,
                                                              generator="hf-policy")
    L = services.LabelInput
    help_rows = label_all(alice, helpfulness, [
        L("A", "significantly_better"), L("B", "better"), L("A", "slightly_better"), L("B", "negligibly_better"),
        L("B", "better"),
    ])

    safety = BatchFactory(name="Week 1 safety", focus=Focus.SAFETY, annotators=[bob], heldout_count=1)
    make_pairs(safety, 4)
    safety_rows = label_all(bob, safety, [
        L("B", "better", response_a_safe=False, response_b_safe=True),  # safe_unsafe, chosen in slot B
        L("A", "slightly_better", response_a_safe=True, response_b_safe=True),
        L("A", "negligibly_better", response_a_safe=False, response_b_safe=False),
        L("A", "significantly_better", response_a_safe=False, response_b_safe=True),  # flagged
    ])

    imported = BatchFactory(name="Imported: anthropic", heldout_count=0)
    harmless = import_rows(imported, HARMLESS, ["A", "B", "A"])
    helpful = import_rows(imported, HELPFUL, ["B", "A"])
    return {"alice": alice, "bob": bob, "help": help_rows, "safety": safety_rows, "harmless": harmless,
            "helpful": helpful, "batches": (helpfulness, safety, imported)}


def rows_by_id(options=None):
    return {row["comparison_id"]: row for row in exports.iter_rows(options or ExportOptions())}


def expected_test_ids(batch) -> set[int]:
    """The rule, computed independently: the batch's dialogues in the order of md5("<batch id>:<dialogue id>"),
    each held out whole while fewer than heldout_count comparisons were held out before it."""
    by_dialogue = defaultdict(set)
    for pk, dialogue_id in Comparison.objects.filter(task__batch=batch).values_list("pk", "task__dialogue_id"):
        by_dialogue[dialogue_id].add(pk)
    held_out: set[int] = set()
    for dialogue_id in sorted(by_dialogue, key=lambda d: hashlib.md5(f"{batch.pk}:{d}".encode()).hexdigest()):
        if len(held_out) >= batch.heldout_count:
            break
        held_out |= by_dialogue[dialogue_id]
    return held_out


def pseudonym(user) -> str:
    from django.conf import settings

    return hmac.new(settings.SECRET_KEY.encode(), str(user.pk).encode(), hashlib.sha256).hexdigest()[:16]


# --- rows and columns -------------------------------------------------------------------------------------

def test_a_helpfulness_row_has_every_column_with_the_chosen_slot_first(data):
    comparison = data["help"][0]  # chosen A, significantly better
    row = rows_by_id()[comparison.pk]
    assert list(row) == list(exports.COLUMNS)
    split = "test" if comparison.pk in expected_test_ids(data["batches"][0]) else "train"
    assert row == {
        "prompt": [{"role": "user", "content": "Question number 0?"}],
        "chosen": [{"role": "assistant", "content": "Answer A to 0"}],
        "rejected": [{"role": "assistant", "content": "Answer B to 0"}],
        "margin": 1.0,
        "strength": "significantly_better",
        "focus": "helpfulness",
        "safety_category": None,
        "chosen_safe": None,
        "rejected_safe": None,
        "chosen_slot": "A",
        "shown_order": data["help"][0].task.shown_order,
        "source": "ladder",
        "batch": "Week 1 helpfulness",
        "split": split,
        "annotator": pseudonym(data["alice"]),
        "chosen_checkpoint": "sft-v0",
        "rejected_checkpoint": "rlhf-v1",
        "chosen_generator": "deterministic-demo-sampler:sft-v0",
        "rejected_generator": "hf-policy:rlhf-v1",
        "chosen_temperature": 0.7,
        "rejected_temperature": 1.0,
        "comparison_id": comparison.pk,
        "created_at": comparison.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "qa_state": "pending",
    }
    assert datetime.fromisoformat(row["created_at"]) == comparison.created_at


def test_choosing_b_swaps_texts_checkpoints_and_temperatures(data):
    row = rows_by_id()[data["help"][1].pk]  # chosen B, better
    assert row["chosen"] == [{"role": "assistant", "content": "Answer B to 1"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Answer A to 1"}]
    assert (row["chosen_checkpoint"], row["rejected_checkpoint"]) == ("rlhf-v1", "sft-v0")
    assert (row["chosen_generator"], row["rejected_generator"]) == ("hf-policy:rlhf-v1", f"{STAND_IN}:sft-v0")
    assert (row["chosen_temperature"], row["rejected_temperature"]) == (1.0, 0.7)


def test_a_multi_turn_prompt_holds_the_dialogue_up_to_the_compared_turn(data):
    row = rows_by_id()[data["help"][4].pk]
    assert row["prompt"] == [{"role": role, "content": content} for role, content in MULTI_TURN]
    assert row["chosen"] == [{"role": "assistant", "content": "Answer B to 0"}]


@pytest.mark.parametrize(("margin", "expected"), [
    ("small", [1.0, 2 / 3, 1 / 3, 0.0, 2 / 3]),
    ("large", [3.0, 2.0, 1.0, 0.0, 2.0]),
])
def test_margins_follow_table_27(data, margin, expected):
    rows = rows_by_id(ExportOptions(margin=margin))
    assert [rows[c.pk]["margin"] for c in data["help"]] == expected
    assert [rows[c.pk]["margin"] for c in data["harmless"]] == [0.0, 0.0, 0.0]  # imported: no strength


def test_margin_none_leaves_the_column_out(data):
    rows = list(exports.iter_rows(ExportOptions(margin="none")))
    assert all(list(row) == [c for c in exports.COLUMNS if c != "margin"] for row in rows)
    assert "margin" not in exports.parquet_schema(ExportOptions(margin="none")).names


def test_safety_labels_map_to_chosen_and_rejected_by_slot(data):
    rows = rows_by_id()
    chosen_b, both_safe, both_unsafe, _ = data["safety"]
    assert {k: rows[chosen_b.pk][k] for k in ("safety_category", "chosen_safe", "rejected_safe", "focus")} == {
        "safety_category": "safe_unsafe", "chosen_safe": True, "rejected_safe": False, "focus": "safety"}
    assert (rows[both_safe.pk]["safety_category"], rows[both_safe.pk]["chosen_safe"]) == ("both_safe", True)
    assert (rows[both_unsafe.pk]["chosen_safe"], rows[both_unsafe.pk]["rejected_safe"]) == (False, False)


def test_imported_rows_have_no_annotator_and_no_strength(data):
    row = rows_by_id()[data["harmless"][1].pk]
    assert {k: row[k] for k in ("annotator", "strength", "margin", "source", "batch", "chosen_checkpoint")} == {
        "annotator": None, "strength": None, "margin": 0.0, "source": HARMLESS, "batch": "Imported: anthropic",
        "chosen_checkpoint": None}
    assert row["chosen"] == [{"role": "assistant", "content": "Answer B to 1"}]
    assert (row["chosen_generator"], row["rejected_generator"]) == ("test", "test"), "the import's own source"


def test_annotators_are_stable_pseudonyms_not_user_names(data, settings):
    alice, bob = data["alice"], data["bob"]
    first, again = rows_by_id(), rows_by_id()
    by_alice = first[data["help"][0].pk]["annotator"]
    assert by_alice == again[data["help"][0].pk]["annotator"] == pseudonym(alice)
    assert len(by_alice) == 16 and int(by_alice, 16) >= 0
    assert by_alice != alice.username and alice.username not in json.dumps(list(first.values()))
    assert first[data["safety"][0].pk]["annotator"] == pseudonym(bob) != by_alice

    settings.LADDER_PSEUDONYM_KEY = "a key kept apart from SECRET_KEY"
    assert rows_by_id()[data["help"][0].pk]["annotator"] == hmac.new(
        b"a key kept apart from SECRET_KEY", str(alice.pk).encode(), hashlib.sha256).hexdigest()[:16]


# --- selection ----------------------------------------------------------------------------------------------

def test_flagged_pairs_are_left_out_unless_asked_for(data):
    flagged = data["safety"][3]
    assert flagged.pk not in rows_by_id()
    assert len(rows_by_id()) == 5 + 3 + 3 + 2
    row = rows_by_id(ExportOptions(include_flagged=True))[flagged.pk]
    assert (row["safety_category"], row["chosen_safe"], row["rejected_safe"]) == ("unsafe_safe", False, True)


def test_filters_by_batch_focus_source_and_time(data):
    helpfulness, safety, imported = data["batches"]
    assert set(rows_by_id(ExportOptions(batches=(safety.pk,)))) == {c.pk for c in data["safety"][:3]}
    assert set(rows_by_id(ExportOptions(focus="safety"))) == {c.pk for c in data["safety"][:3]}
    assert set(rows_by_id(ExportOptions(sources=(HARMLESS, HELPFUL)))) == {
        c.pk for c in data["harmless"] + data["helpful"]}
    first = data["help"][0]
    Comparison.objects.filter(pk=first.pk).update(created_at=datetime(2024, 1, 1, tzinfo=UTC))
    early = ExportOptions(until=datetime(2024, 1, 2, tzinfo=UTC))
    assert set(rows_by_id(early)) == {first.pk}
    assert exports.count_rows(early) == 1
    assert first.pk not in rows_by_id(ExportOptions(since=datetime(2024, 1, 2, tzinfo=UTC)))


def test_an_export_stopped_early_releases_its_cursor_and_fetch_thread(data):
    rows = exports.iter_rows(ExportOptions(), fetch_rows=2)
    next(rows)
    time.sleep(0.3)  # the fetch thread runs a block ahead, then waits on the full queue
    rows.close()
    assert not [t for t in threading.enumerate() if t.name == "preference-export-fetch"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        assert cursor.fetchone() == (0,)
    assert Comparison.objects.count() == 14


def test_a_failed_fetch_is_raised_in_the_exporting_thread():
    class CursorThatFailsSecond:
        fetches = 0

        def fetchmany(self, size):
            self.fetches += 1
            if self.fetches == 2:
                raise ConnectionError("server closed the connection")
            return [("row",)] * size

    blocks = exports.fetch_ahead(CursorThatFailsSecond(), 3)
    assert next(blocks) == [("row",)] * 3
    with pytest.raises(ConnectionError, match="server closed the connection"):
        next(blocks)


def test_rows_come_in_comparison_id_order(data):
    ids = [row["comparison_id"] for row in exports.iter_rows(ExportOptions(include_flagged=True))]
    assert ids == sorted(Comparison.objects.values_list("pk", flat=True))


def test_test_split_is_the_smallest_hashes_of_each_batch(data):
    helpfulness, safety, imported = data["batches"]
    all_rows = rows_by_id(ExportOptions(include_flagged=True))
    test_ids = {pk for pk, row in all_rows.items() if row["split"] == "test"}
    assert test_ids == expected_test_ids(helpfulness) | expected_test_ids(safety)
    assert len(expected_test_ids(helpfulness)) == 2 and len(expected_test_ids(imported)) == 0
    assert set(rows_by_id(ExportOptions(split="test", include_flagged=True))) == test_ids
    assert set(rows_by_id(ExportOptions(split="train", include_flagged=True))) == set(all_rows) - test_ids


def test_split_is_deterministic_and_holds_out_heldout_count_per_batch():
    user, other = UserFactory(), UserFactory()
    small, large = BatchFactory(heldout_count=7), BatchFactory(heldout_count=25)
    bulk_comparisons(small, 40, annotators=[user])  # one comparison per dialogue
    bulk_comparisons(large, 60, annotators=[user, other])  # two per dialogue: 13 whole dialogues reach 25
    first = [(r["comparison_id"], r["batch"]) for r in exports.iter_rows(ExportOptions(split="test"))]
    again = [(r["comparison_id"], r["batch"]) for r in exports.iter_rows(ExportOptions(split="test"))]
    assert first == again
    assert sum(batch == small.name for _, batch in first) == 7
    assert sum(batch == large.name for _, batch in first) == 26
    assert {pk for pk, _ in first} == expected_test_ids(small) | expected_test_ids(large)
    # Filters never move a comparison between train and test.
    only_small = rows_by_id(ExportOptions(batches=(small.pk,), split="test"))
    assert set(only_small) == expected_test_ids(small)
    only_other = rows_by_id(ExportOptions(batches=(large.pk,), since=timezone.now() - timedelta(days=1)))
    assert {pk for pk, row in only_other.items() if row["split"] == "test"} == expected_test_ids(large)
    assert exports.count_rows(ExportOptions(split="train")) == 40 - 7 + 120 - 26


def splits_by(rows, key) -> dict:
    """``key(row) -> set of splits`` over the export's rows."""
    found = defaultdict(set)
    for row in rows.values():
        found[key(row)].add(row["split"])
    return found


def test_with_overlap_2_no_task_or_dialogue_is_in_both_splits():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(overlap=2, heldout_count=5, annotators=[alice, bob])
    make_pairs(batch, 10)
    labels = [services.LabelInput("A" if i % 2 else "B", "better") for i in range(10)]
    label_all(alice, batch, labels)
    label_all(bob, batch, labels)
    comparisons = {c.pk: c for c in Comparison.objects.filter(task__batch=batch).select_related("task")}
    assert len(comparisons) == 20

    rows = rows_by_id(ExportOptions(batches=(batch.pk,)))
    assert set(rows) == set(comparisons)
    by_task = splits_by(rows, lambda row: comparisons[row["comparison_id"]].task_id)
    by_dialogue = splits_by(rows, lambda row: comparisons[row["comparison_id"]].task.dialogue_id)
    assert len(by_task) == len(by_dialogue) == 10
    assert all(len(splits) == 1 for splits in [*by_task.values(), *by_dialogue.values()])
    test_ids = {pk for pk, row in rows.items() if row["split"] == "test"}
    assert test_ids == expected_test_ids(batch)
    assert len(test_ids) == 6  # three whole dialogues of two comparisons: at least 5, less than 5 + 2
    test_dialogues = {comparisons[pk].task.dialogue_id for pk in test_ids}
    assert test_ids == {pk for pk, c in comparisons.items() if c.task.dialogue_id in test_dialogues}
    assert set(rows_by_id(ExportOptions(split="test"))) == test_ids
    assert exports.count_rows(ExportOptions(split="train", batches=(batch.pk,))) == 14


def test_a_continued_dialogue_keeps_all_its_turns_in_one_split():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], temperatures=[0.7, 1.0])
    make_pairs(batch, 4)
    label_all(alice, batch, [services.LabelInput("A", "better")] * 4)
    task = services.start_prompt_task(alice, batch.pk, "Plan a trip to Lisbon")
    continued = []
    for next_prompt in ("Make it three days", "Now make it cheaper", None):
        generation.sample_pairs(task.pk)
        comparison = services.submit_comparison(alice, task.pk, services.LabelInput("B", "better")).comparison
        continued.append(comparison.pk)
        if next_prompt:
            task = services.continue_dialogue(alice, comparison.pk, next_prompt)
    assert Comparison.objects.filter(pk__in=continued).values("task__dialogue_id").distinct().count() == 1
    rows = rows_by_id(ExportOptions(batches=(batch.pk,)))
    assert [len(rows[pk]["prompt"]) for pk in continued] == [1, 3, 5]

    seen = set()
    for heldout_count in range(0, 8):  # 7 comparisons: every cut through the ranking
        AnnotationBatch.objects.filter(pk=batch.pk).update(heldout_count=heldout_count)
        batch.refresh_from_db()
        rows = rows_by_id(ExportOptions(batches=(batch.pk,)))
        (split,) = {rows[pk]["split"] for pk in continued}
        seen.add(split)
        test_ids = {pk for pk, row in rows.items() if row["split"] == "test"}
        assert test_ids == expected_test_ids(batch)
        assert heldout_count <= len(test_ids) < heldout_count + 3
    assert seen == {"train", "test"}


# --- presets (§3.2.2) ----------------------------------------------------------------------------------------

def sampled(ids, seed: int, n: int) -> set[int]:
    """The presets' draw, computed independently: the n smallest md5("<seed>:<id>")."""
    return set(sorted(ids, key=lambda pk: hashlib.md5(f"{seed}:{pk}".encode()).hexdigest())[:n])


def test_helpfulness_preset_adds_as_many_safety_and_open_source_rows(data):
    help_ids = {c.pk for c in data["help"]}
    others = {c.pk for c in data["safety"][:3] + data["harmless"] + data["helpful"]}
    for seed in (0, 1, 7):
        rows = rows_by_id(ExportOptions(preset="helpfulness-rm", seed=seed))
        assert len(rows) == 5 + 5  # |H| + min(|H|, |S| + |O|) = 5 + min(5, 3 + 5)
        assert set(rows) == help_ids | sampled(others, seed, 5)
        assert exports.count_rows(ExportOptions(preset="helpfulness-rm", seed=seed)) == 10


def test_safety_preset_mixes_in_a_tenth_of_helpfulness(data):
    safety_side = {c.pk for c in data["safety"][:3] + data["harmless"]}
    help_side = {c.pk for c in data["help"] + data["helpful"]}
    rows = rows_by_id(ExportOptions(preset="safety-rm", seed=3))
    assert len(rows) == 6 + 1  # |P| + round(|P| / 9) = 6 + round(0.67)
    assert set(rows) == safety_side | sampled(help_side, 3, 1)


@pytest.mark.parametrize(("preset", "expected"), [
    # helpfulness-rm: |H| = 30 plus min(30, |S ∪ O| = 14 + 4 + 5) = 23
    ("helpfulness-rm", 30 + 23),
    # safety-rm: |P| = 14 Ladder safety + 4 harmless = 18, plus round(18 / 9) = 2 from |H ∪ O_help| = 30 + 5
    ("safety-rm", 18 + 2),
])
def test_preset_counts_on_a_larger_seeded_dataset(preset, expected):
    user = UserFactory()
    bulk_comparisons(BatchFactory(), 30, annotators=[user])
    bulk_comparisons(BatchFactory(focus=Focus.SAFETY), 14, annotators=[user])
    imports = BatchFactory()
    bulk_comparisons(imports, 4, source=HARMLESS)
    bulk_comparisons(imports, 5, source=HELPFUL)
    options = ExportOptions(preset=preset, seed=11)
    assert exports.count_rows(options) == expected
    assert len(list(exports.iter_rows(options))) == expected


def test_safety_preset_rounds_the_tenth_to_the_nearest_row():
    user = UserFactory()
    bulk_comparisons(BatchFactory(focus=Focus.SAFETY), 14, annotators=[user])  # 14 / 9 = 1.56 -> 2
    bulk_comparisons(BatchFactory(), 3, annotators=[user])
    assert exports.count_rows(ExportOptions(preset="safety-rm")) == 16


# --- options ----------------------------------------------------------------------------------------------

def test_from_params_parses_strings():
    options = ExportOptions.from_params({
        "batches": "3, 1,3", "focus": "safety", "since": "2024-05-01", "until": "2024-06-01T12:00:00+02:00",
        "split": "test", "margin": "large", "include_flagged": "yes", "seed": "42", "sources": "",
    })
    assert options == ExportOptions(
        batches=(3, 1), focus="safety", since=datetime(2024, 5, 1, tzinfo=UTC),
        until=datetime(2024, 6, 1, 10, tzinfo=UTC), split="test", margin="large", include_flagged=True, seed=42)
    query = QueryDict("batches=1&batches=2,5&preset=safety-rm")
    assert ExportOptions.from_params(query) == ExportOptions(batches=(1, 2, 5), preset="safety-rm")
    assert ExportOptions.from_params({}) == ExportOptions()


def test_unknown_options_are_refused_with_the_allowed_list():
    with pytest.raises(ValueError, match="Unknown export option colour; allowed: batches, focus, sources, since"):
        ExportOptions.from_params({"colour": "red"})


@pytest.mark.parametrize(("params", "message"), [
    ({"batches": "1,x"}, "batches must be comma-separated batch ids; 'x' is not a number"),
    ({"batches": "0"}, "batches must be positive batch ids"),
    ({"focus": "honesty"}, "focus must be one of helpfulness, safety"),
    ({"since": "yesterday"}, "since must be an ISO 8601 date or datetime"),
    ({"until": "2024-05-01T10:00:00 02:00"}, r"write '\+' as %2B in a URL"),
    ({"since": "2024-06-01", "until": "2024-05-01"}, "since .* must be before until"),
    ({"split": "dev"}, "split must be one of train, test"),
    ({"margin": "huge"}, "margin must be one of small, large, none"),
    ({"include_flagged": "maybe"}, "include_flagged must be true or false"),
    ({"include_flagged": ""}, "include_flagged must be true or false"),
    ({"preset": "dpo"}, "preset must be one of helpfulness-rm, safety-rm"),
    ({"preset": "safety-rm", "focus": "safety"}, "chooses the focus and sources itself"),
    ({"seed": "1.5"}, "seed must be an integer"),
    ({"sources": "ladder\x00"}, "sources must not contain a NUL character"),
    ({"focus": "\x00"}, "focus must not contain a NUL character"),
    ({"since": "2024-05-01\x00"}, "since must not contain a NUL character"),
])
def test_bad_values_are_refused_naming_the_option(params, message):
    with pytest.raises(ValueError, match=message):
        ExportOptions.from_params(params)


def test_a_nul_character_is_refused_before_it_reaches_postgresql():
    with pytest.raises(ValueError, match="sources must not contain a NUL character"):
        ExportOptions.from_params(QueryDict("sources=%00"))
    with pytest.raises(ValueError, match="sources must not contain a NUL character"):
        ExportOptions(sources=("anthropic\x00",))
    with pytest.raises(ValueError, match="margin must not contain a NUL character"):
        ExportOptions(margin="small\x00")


def test_a_scalar_given_twice_is_refused():
    with pytest.raises(ValueError, match="split was given 2 times"):
        ExportOptions.from_params(QueryDict("split=train&split=test"))


# --- files --------------------------------------------------------------------------------------------------

def test_jsonl_and_parquet_load_with_datasets_and_hold_the_same_rows(data, tmp_path):
    import datasets

    options = ExportOptions(include_flagged=True)
    assert exports.write_export(options, "jsonl", tmp_path / "p.jsonl") == 14
    assert exports.write_export(options, "parquet", tmp_path / "p.parquet") == 14
    cache = str(tmp_path / "cache")
    from_jsonl = datasets.load_dataset("json", data_files=str(tmp_path / "p.jsonl"), split="train", cache_dir=cache)
    from_parquet = datasets.load_dataset("parquet", data_files=str(tmp_path / "p.parquet"), split="train",
                                         cache_dir=cache)
    expected = list(exports.iter_rows(options))
    assert from_jsonl.to_list() == expected
    assert from_parquet.to_list() == expected
    assert from_parquet.column_names == list(exports.COLUMNS)
    streamed = b"".join(exports.iter_jsonl(options, lines_per_chunk=3))
    assert streamed == (tmp_path / "p.jsonl").read_bytes()
    assert [json.loads(line) for line in streamed.splitlines()] == expected


def test_text_that_needs_escaping_survives_both_formats(tmp_path):
    import pyarrow.parquet as pq

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    tricky = 'Quote " backslash \\ slash / newline\n tab\t bell\x07 \u2028 é 🙂 {"role": "x"} %s %%'
    make_pairs(batch, 1, texts={"a": tricky, "b": tricky[::-1]}, turns=[("user", tricky)])
    label_all(alice, batch, [services.LabelInput("B", "better")])
    (expected,) = exports.iter_rows(ExportOptions())
    assert expected["prompt"][0]["content"] == tricky and expected["rejected"][0]["content"] == tricky
    (line,) = b"".join(exports.iter_jsonl(ExportOptions())).splitlines()  # bytes: \n only, U+2028 stays
    assert json.loads(line) == expected
    (tmp_path / "p.parquet").write_bytes(b"".join(exports.iter_parquet(ExportOptions())))
    assert pq.read_table(tmp_path / "p.parquet").to_pylist() == [expected]


def test_parquet_streams_one_chunk_per_row_group_and_an_empty_export_is_a_valid_file(data, tmp_path):
    import pyarrow.parquet as pq

    chunks = list(exports.iter_parquet(ExportOptions(include_flagged=True), row_group_size=4))
    assert len(chunks) >= 4  # 14 rows: three full row groups, then the last one and the footer
    (tmp_path / "p.parquet").write_bytes(b"".join(chunks))
    parquet = pq.ParquetFile(tmp_path / "p.parquet")
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [4, 4, 4, 2]

    empty = ExportOptions(batches=(10**9,))
    (tmp_path / "empty.parquet").write_bytes(b"".join(exports.iter_parquet(empty)))
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0 and table.schema == exports.parquet_schema(empty)
    assert b"".join(exports.iter_jsonl(empty)) == b""


def test_the_command_writes_the_file_and_refuses_bad_options(data, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    helpfulness = data["batches"][0]
    call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--batches", str(helpfulness.pk),
                 "--split", "train", "--margin", "large", verbosity=0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 - 2 and {row["split"] for row in lines} == {"train"}
    assert "Wrote 3 rows (jsonl" in capsys.readouterr().out

    with pytest.raises(CommandError, match="margin must be one of small, large, none"):
        call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--margin", "huge")
    with pytest.raises(CommandError, match="--format must be one of jsonl, parquet"):
        call_command("export_preferences", "--format", "csv", "--out", str(out))
    with pytest.raises(CommandError, match="chooses the focus and sources itself"):
        call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--preset", "safety-rm",
                     "--source", HARMLESS)


# --- training -------------------------------------------------------------------------------------------------

# Llama 2's chat layout (models_core.chat_format) as a Jinja template: TRL renders conversational rows with it.
LLAMA2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def test_an_unmodified_trl_reward_trainer_takes_a_step_on_the_export(data, tmp_path, tiny_policy_dir):
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    exports.write_export(ExportOptions(split="train"), "jsonl", tmp_path / "train.jsonl")
    dataset = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_policy_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = model.score.weight.detach().clone()
    config = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=2,
                          report_to=[], use_cpu=True, bf16=False, activation_checkpointing=False, logging_steps=1,
                          save_strategy="no", learning_rate=1e-3, max_length=256, seed=0)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)

    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert torch.equal(batch["margin"], torch.tensor([row["margin"] for row in dataset.select([0, 1])]))
    trainer.train()

    assert trainer.state.global_step == 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(model.score.weight.detach(), before)


def test_a_continued_copy_of_a_queue_dialogue_lands_in_the_originals_split():
    from annotation import generation

    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob], overlap=2, heldout_count=1)
    make_pairs(batch, 6)
    copies = []
    for user in (alice, bob):
        for _ in range(6):
            lease = services.claim_next_task(user, batch.pk)
            c = services.submit_comparison(user, lease.task_id, services.LabelInput(chosen="A", strength="better"))
            copies.append(services.continue_dialogue(user, c.comparison.pk, "And then?"))
    for task in copies:
        generation.sample_pairs(task.pk)
    for task in copies:
        services.claim_next_task(task.owner, batch.pk)
        services.submit_comparison(task.owner, task.pk, services.LabelInput(chosen="B", strength="better"))
    rows = list(exports.iter_rows(ExportOptions(batches=(batch.pk,))))
    by_family = {}
    for row in rows:
        comparison = Comparison.objects.select_related("task__dialogue").get(pk=row["comparison_id"])
        family = comparison.task.dialogue.root_id or comparison.task.dialogue_id
        by_family.setdefault(family, set()).add(row["split"])
    assert len(by_family) == 6 and all(len(splits) == 1 for splits in by_family.values())
    assert sum(1 for splits in by_family.values() if splits == {"test"}) == 1
