"""Real public preference data imports whole: rows that cannot be a comparison are refused by line and
reason, or, with --skip-invalid (skip_invalid=true), left out, counted by reason and listed in a rejects
file; consecutive turns of one speaker are merged in every format that takes dialogues."""

import gzip
import io
import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation.imports import import_preferences, import_prompts
from annotation.models import AnnotationBatch, Comparison, ComparisonTask, Dialogue, Prompt, Response, Turn
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

HH_DEV = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "hh_rlhf_harmless_base_dev.jsonl.gz"
DOCUMENTED = ["--format", "hh-rlhf", "--source", "anthropic-hh-harmless", "--focus", "safety"]
# Counted once from the file with a separate script (split each transcript on its "\n\nHuman:" /
# "\n\nAssistant:" markers, compare the sides): lines 53, 346, 624 and 726 have an empty final chosen
# response; lines 441, 813, 1103, 1273 and 1322 have two Assistant turns in a row, four of which would differ
# before the last turn if those turns were not merged. Nothing else is unusable.
EMPTY_RESPONSE_LINES = [53, 346, 624, 726]


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def row_counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (AnnotationBatch, Dialogue, Turn, Response, ComparisonTask, Comparison))


@pytest.fixture
def hh_copy(tmp_path) -> Path:
    path = tmp_path / HH_DEV.name
    shutil.copy(HH_DEV, path)
    return path


def test_the_bundled_file_imports_whole_with_skip_invalid_and_lists_its_four_empty_responses(hh_copy):
    out = io.StringIO()
    call_command("import_preferences", str(hh_copy), *DOCUMENTED, "--skip-invalid", stdout=out, verbosity=0)

    rejects = Path(f"{hh_copy}.rejects.jsonl")
    assert out.getvalue().splitlines() == [
        f"Imported 1,496 comparisons (0 already present) from 1,500 rows of {hh_copy} into batch "
        "'Imported: anthropic-hh-harmless'.",
        f"Left out 4 rows that cannot be a comparison (empty-response 4); listed in {rejects}.",
    ]
    batch = AnnotationBatch.objects.get(name="Imported: anthropic-hh-harmless")
    assert (batch.focus, Comparison.objects.filter(task__batch=batch).count()) == ("safety", 1496)
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"], r["detail"]) for r in listed] == [
        (n, "empty-response", "the chosen response is empty") for n in EMPTY_RESPONSE_LINES]
    with gzip.open(HH_DEV, "rt", encoding="utf-8") as fh:
        original = fh.readlines()
    assert listed[0]["row"] == json.loads(original[52])  # the row itself, to fix and import again


def test_the_bundled_file_rows_with_two_assistant_turns_in_a_row_are_merged(hh_copy):
    call_command("import_preferences", str(hh_copy), *DOCUMENTED, "--skip-invalid", verbosity=0)
    # Line 813: the chosen transcript ends "...drag kings.  Human: Then how ...?\n\nAssistant:  I think they
    # call them that because"; the rejected one has one Assistant turn there.
    merged = Response.objects.get(slot="A", text__endswith="I think they call them that because")
    assert "\n\nI think they call them that because" in merged.text
    assert merged.dialogue.turns.count() == 3  # Human, Assistant, Human: the same prefix as the rejected side
    roles = list(Turn.objects.order_by("dialogue_id", "index").values_list("dialogue_id", "role"))
    by_dialogue: dict[int, list[str]] = {}
    for dialogue, role in roles:
        by_dialogue.setdefault(dialogue, []).append(role)
    assert all(r == ["user", "assistant"] * (len(r) // 2) + ["user"] for r in by_dialogue.values())


def test_the_bundled_file_without_the_flag_is_refused_at_line_53_naming_skip_invalid(hh_copy):
    with pytest.raises(CommandError) as excinfo:
        call_command("import_preferences", str(hh_copy), *DOCUMENTED, verbosity=0)
    assert str(excinfo.value) == (
        f"{hh_copy}: line 53: the chosen response is empty (empty-response); rows that cannot be a comparison "
        "are refused; pass --skip-invalid to leave them out and list them in a rejects file (nothing was imported)")
    assert row_counts() == (0, 0, 0, 0, 0, 0)
    assert not Path(f"{hh_copy}.rejects.jsonl").exists()


def test_hand_written_rows_of_the_full_release_shapes_are_counted_per_reason(tmp_path):
    rows = [
        {"chosen": hh("Q1", "good"), "rejected": hh("Q1", "bad")},
        # differs before the last turn, even after merging
        {"chosen": hh("Hi", "Hello", "Q2", "good"), "rejected": hh("Hi", "Hey", "Q2", "bad")},
        # one speaker twice in a row, in the shared part: merged on both sides, then a valid pair
        {"chosen": "\n\nHuman: Q3\n\nHuman: Please?\n\nAssistant: good",
         "rejected": "\n\nHuman: Q3\n\nHuman: Please?\n\nAssistant: bad"},
        {"chosen": hh("Q4", "same"), "rejected": hh("Q4", "same")},
        {"chosen": hh("Q5", ""), "rejected": hh("Q5", "bad")},
        {"chosen": hh("Q6", "good", "And?"), "rejected": hh("Q6", "bad")},
        {"chosen": hh("", "good"), "rejected": hh("", "bad")},
    ]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    call_command("import_preferences", str(path), "--format", "hh-rlhf", "--source", "hh", "--skip-invalid",
                 "--rejects", str(tmp_path / "left-out.jsonl"), stdout=out, verbosity=0)
    assert out.getvalue().splitlines()[1] == (
        "Left out 5 rows that cannot be a comparison (differing-dialogues 1, empty-response 1, empty-turn 1, "
        f"identical-responses 1, no-response 1); listed in {tmp_path / 'left-out.jsonl'}.")
    listed = [json.loads(line) for line in (tmp_path / "left-out.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in listed] == [
        (2, "differing-dialogues"), (4, "identical-responses"), (5, "empty-response"), (6, "no-response"),
        (7, "empty-turn")]
    assert list(Response.objects.order_by("text").values_list("text", flat=True)) == [
        "bad", "bad", "good", "good"]
    merged = Turn.objects.get(content__startswith="Q3")
    assert (merged.index, merged.role, merged.content) == (0, "user", "Q3\n\nPlease?")


def test_a_malformed_row_fails_the_import_with_skip_invalid_too_and_leaves_no_rejects_file(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": hh("Q", "same"), "rejected": hh("Q", "same")}) + "\n{broken\n")
    with pytest.raises(CommandError, match="line 2: not valid JSON"):
        call_command("import_preferences", str(path), "--format", "hh-rlhf", "--source", "hh", "--skip-invalid",
                     verbosity=0)
    assert row_counts() == (0, 0, 0, 0, 0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hh.jsonl"]


def test_every_row_left_out_writes_no_batch(tmp_path):
    rows = [{"chosen": hh("Q", "same"), "rejected": hh("Q", "same")}]
    result = import_preferences(jsonl(*rows), fmt="hh-rlhf", source="hh", skip_invalid=True)
    assert (result.created, result.lines, result.rejected, result.batches) == (0, 1, {"identical-responses": 1}, ())
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_reading_stdin_with_skip_invalid_needs_a_rejects_path():
    with pytest.raises(CommandError, match="name the rejects file with --rejects PATH"):
        call_command("import_preferences", "-", "--format", "hh-rlhf", "--source", "hh", "--skip-invalid")


def test_an_unwritable_rejects_path_is_refused_before_anything_is_imported(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": hh("Q", "a"), "rejected": hh("Q", "b")}) + "\n")
    with pytest.raises(CommandError, match="Cannot write the rejects file .*pass --rejects PATH"):
        call_command("import_preferences", str(path), "--format", "hh-rlhf", "--source", "hh", "--skip-invalid",
                     "--rejects", str(tmp_path / "no-such-dir" / "r.jsonl"), verbosity=0)
    assert row_counts() == (0, 0, 0, 0, 0, 0)


def test_trl_and_prompt_message_lists_merge_consecutive_turns_of_one_role():
    row = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Sky colour?"}],
           "chosen": [{"role": "assistant", "content": "Blue."}, {"role": "assistant", "content": "Mostly."}],
           "rejected": "Green."}
    import_preferences(jsonl(row), fmt="trl", source="trl")
    task = ComparisonTask.objects.get()
    assert list(task.dialogue.turns.values_list("role", "content")) == [("user", "Hi\n\nSky colour?")]
    assert task.response_a.text == "Blue.\n\nMostly."

    implicit = {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"},
                           {"role": "assistant", "content": "b"}],
                "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "c"}]}
    import_preferences(jsonl(implicit), fmt="trl", source="trl-implicit")
    assert Response.objects.filter(slot="A", text="a\n\nb").exists()

    batch = BatchFactory()
    messages = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    import_prompts(jsonl({"messages": messages}), batch=batch, fmt="jsonl")
    assert Prompt.objects.get().messages == [{"role": "user", "content": "one\n\ntwo"}]


def test_the_api_refuses_an_unusable_row_naming_skip_invalid_and_with_it_returns_counts_and_rejects():
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    rows = [{"chosen": hh("Q1", "good"), "rejected": hh("Q1", "bad")},
            {"chosen": hh("Q2", ""), "rejected": hh("Q2", "bad")}]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    url = "/api/v1/imports/preferences/?format=hh-rlhf&source=hh"
    r = client.generic("POST", url, body, content_type="application/x-ndjson")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unusable_row"
    assert r.json()["error"]["detail"].startswith(
        "line 2: the chosen response is empty (empty-response); rows that cannot be a comparison are refused: "
        "add skip_invalid=true")
    assert row_counts() == (0, 0, 0, 0, 0, 0)

    r = client.generic("POST", url + "&skip_invalid=true", body, content_type="application/x-ndjson")
    assert r.status_code == 201
    assert r.json() == {"created": 1, "skipped": 0, "lines": 2, "rejected": {"empty-response": 1},
                        "rejects": [{"line": 2, "reason": "empty-response",
                                     "detail": "the chosen response is empty"}],
                        "rejects_truncated": False, "batches": ["Imported: hh"]}


def test_the_api_lists_the_first_hundred_rejects_and_says_there_are_more():
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    body = "".join(json.dumps({"chosen": hh(f"Q{i}", "x"), "rejected": hh(f"Q{i}", "x")}) + "\n" for i in range(130))
    r = client.generic("POST", "/api/v1/imports/preferences/?format=hh-rlhf&source=hh&skip_invalid=1", body,
                       content_type="application/x-ndjson")
    data = r.json()
    assert (r.status_code, data["rejected"], len(data["rejects"]), data["rejects_truncated"]) == (
        201, {"identical-responses": 130}, 100, True)
    assert data["rejects"][-1]["line"] == 100


def test_skip_invalid_is_not_a_licence_for_malformed_rows():
    with pytest.raises(ValidationError, match="line 1: 'rejected' must be a transcript string"):
        import_preferences(jsonl({"chosen": hh("Q", "a"), "rejected": 3}), fmt="hh-rlhf", source="hh",
                           skip_invalid=True)
