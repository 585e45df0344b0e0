"""PKU-SafeRLHF rows: one helpfulness comparison (better_response_id) and one safety comparison
(safer_response_id, with both responses' safety labels and the category derived as for labels made here),
each in its own imported batch, seen by the export presets on the right side."""

import io
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from rest_framework.test import APIClient

from annotation.imports import import_preferences
from annotation.models import AnnotationBatch, Comparison, Focus, SafetyCategory
from rlhf import exports
from rlhf.exports import ExportOptions
from tests.factories import BatchFactory, UserFactory, bulk_comparisons

pytestmark = pytest.mark.django_db

HARM = ["Endangering National Security", "Insulting Behavior", "Discriminatory Behavior",
        "Endangering Public Health", "Copyright Issues", "Violation of Social Norms", "Privacy Violation",
        "Economic Crime", "Mental Manipulation", "Human Trafficking", "Physical Harm", "Sexual Content",
        "Cybercrime", "Disrupting Public Order", "Environmental Damage", "Psychological Harm",
        "White-Collar Crime", "Animal Abuse", "Drugs", "Violence"]


def pku(prompt, r0, r1, *, better, safer, safe0, safe1):
    """A row with every field of the dataset card's schema (the importer reads seven of them)."""
    return {
        "prompt": prompt, "response_0": r0, "response_1": r1,
        "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca2-7B",
        "is_response_0_safe": safe0, "is_response_1_safe": safe1,
        "response_0_harm_category": {h: (not safe0 and h == "Cybercrime") for h in HARM},
        "response_1_harm_category": {h: (not safe1 and h == "Cybercrime") for h in HARM},
        "response_0_severity_level": 0 if safe0 else 2, "response_1_severity_level": 0 if safe1 else 1,
        "better_response_id": better, "safer_response_id": safer,
        "response_0_sha256": "0" * 64, "response_1_sha256": "1" * 64,
    }


ROWS = [
    pku("How do I get into my neighbour's wifi?", "Try the default router passwords: admin/admin.",
        "Ask your neighbour; using it without permission is illegal.", better=0, safer=1, safe0=False, safe1=True),
    pku("What is a good way to store passwords?", "Hash them with bcrypt.", "Use a password manager.",
        better=1, safer=1, safe0=True, safe1=True),
    pku("Write a phishing email.", "Dear user, verify your account here.", "Subject: Urgent! Click this link.",
        better=0, safer=0, safe0=False, safe1=False),
    # The dataset's labels can disagree: the "safer" response labelled unsafe, the other safe. As for a
    # label made here, the comparison is kept and flagged (§3.2.1's fourth bin).
    pku("How can I pick a lock?", "Insert a tension wrench, then rake the pins.", "I can't help with that.",
        better=0, safer=0, safe0=False, safe1=True),
]


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def comparisons(batch_name):
    return {c.task.dialogue.turns.get().content: c for c in Comparison.objects.filter(task__batch__name=batch_name)
            .select_related("task__response_a", "task__response_b", "task__dialogue")}


def test_each_row_gives_a_helpfulness_and_a_safety_comparison_in_their_own_batches():
    result = import_preferences(jsonl(*ROWS), fmt="pku-saferlhf", source="pku-saferlhf")

    assert (result.created, result.skipped, result.lines) == (8, 0, 4)
    assert result.batches == ("Imported: pku-saferlhf (helpfulness)", "Imported: pku-saferlhf (safety)")
    assert set(AnnotationBatch.objects.values_list("name", "focus", "status")) == {
        ("Imported: pku-saferlhf (helpfulness)", Focus.HELPFULNESS, "closed"),
        ("Imported: pku-saferlhf (safety)", Focus.SAFETY, "closed")}

    helpful = comparisons("Imported: pku-saferlhf (helpfulness)")
    assert {p: (c.chosen_response.text, c.response_a_safe, c.response_b_safe, c.safety_category)
            for p, c in helpful.items()} == {
        ROWS[0]["prompt"]: (ROWS[0]["response_0"], None, None, ""),
        ROWS[1]["prompt"]: (ROWS[1]["response_1"], None, None, ""),
        ROWS[2]["prompt"]: (ROWS[2]["response_0"], None, None, ""),
        ROWS[3]["prompt"]: (ROWS[3]["response_0"], None, None, ""),
    }
    safety = comparisons("Imported: pku-saferlhf (safety)")
    # Response A is the chosen (safer) one, so response_a_safe is the chosen response's label.
    assert {p: (c.chosen_response.text, c.response_a_safe, c.response_b_safe, c.safety_category)
            for p, c in safety.items()} == {
        ROWS[0]["prompt"]: (ROWS[0]["response_1"], True, False, SafetyCategory.CHOSEN_SAFE_REJECTED_UNSAFE),
        ROWS[1]["prompt"]: (ROWS[1]["response_1"], True, True, SafetyCategory.BOTH_SAFE),
        ROWS[2]["prompt"]: (ROWS[2]["response_0"], False, False, SafetyCategory.BOTH_UNSAFE),
        ROWS[3]["prompt"]: (ROWS[3]["response_0"], False, True, SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE),
    }
    assert safety[ROWS[3]["prompt"]].is_flagged
    assert all(c.task.dialogue.is_safety for c in safety.values())
    assert not any(c.task.dialogue.is_safety for c in helpful.values())
    # Row 2's two comparisons have the same texts in the same order and still are two comparisons.
    assert helpful[ROWS[1]["prompt"]].import_hash != safety[ROWS[1]["prompt"]].import_hash

    again = import_preferences(jsonl(*ROWS), fmt="pku-saferlhf", source="pku-saferlhf")
    assert (again.created, again.skipped) == (0, 8)


def test_focus_or_a_given_batch_keeps_one_side():
    result = import_preferences(jsonl(*ROWS), fmt="pku-saferlhf", source="pku", focus=Focus.SAFETY)
    assert (result.created, result.batches) == (4, ("Imported: pku (safety)",))
    assert not AnnotationBatch.objects.filter(name="Imported: pku (helpfulness)").exists()

    batch = BatchFactory(focus=Focus.HELPFULNESS)
    result = import_preferences(jsonl(*ROWS), fmt="pku-saferlhf", source="pku", batch=batch)
    assert (result.created, result.batches) == (4, (batch.name,))
    assert set(Comparison.objects.filter(task__batch=batch).values_list("safety_category", flat=True)) == {""}


def test_the_export_presets_put_the_safety_side_with_safety_data_and_the_helpfulness_side_in_the_mix():
    import_preferences(jsonl(*ROWS), fmt="pku-saferlhf", source="pku-saferlhf")
    safety_ids = set(Comparison.objects.filter(task__batch__focus=Focus.SAFETY).exclude(
        safety_category=SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE).values_list("id", flat=True))

    # safety-rm: P = the 3 unflagged PKU safety comparisons, plus round(3 / 9) = 0 from the helpfulness side.
    rows = list(exports.iter_rows(ExportOptions(preset="safety-rm")))
    assert {r["comparison_id"] for r in rows} == safety_ids
    assert {(r["focus"], r["source"]) for r in rows} == {("safety", "pku-saferlhf")}
    assert {r["safety_category"] for r in rows} == {"safe_unsafe", "both_safe", "both_unsafe"}

    # helpfulness-rm: H (labels made here) whole, and as many drawn from the rest, PKU's two sides included.
    user = UserFactory()
    bulk_comparisons(BatchFactory(), 10, annotators=[user])
    rows = list(exports.iter_rows(ExportOptions(preset="helpfulness-rm", seed=1)))
    assert len(rows) == 10 + 7  # |H| + min(|H|, 4 helpfulness + 3 unflagged safety imported)
    assert sum(r["source"] == "pku-saferlhf" for r in rows) == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"better_response_id": 2}, "line 1: 'better_response_id' must be 0 or 1, not 2"),
        ({"safer_response_id": True}, "line 1: 'safer_response_id' must be 0 or 1, not true"),
        ({"is_response_1_safe": "yes"}, "line 1: 'is_response_1_safe' must be true or false, not 'yes'"),
        ({"response_0": None}, "line 1: 'response_0' is missing"),
        ({"prompt": ["a"]}, "line 1: 'prompt' must be a string, not a list"),
    ],
)
def test_a_malformed_pku_row_names_its_line_and_writes_nothing(change, message):
    with pytest.raises(ValidationError) as excinfo:
        import_preferences(jsonl({**ROWS[0], **change}), fmt="pku-saferlhf", source="pku", skip_invalid=True)
    assert excinfo.value.messages == [message]
    assert Comparison.objects.count() == AnnotationBatch.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"response_1": ROWS[0]["response_0"]}, "identical-responses",
         "the response_0 and response_1 responses are the same text"),
        ({"response_0": "  "}, "empty-response", "the response_0 response is empty"),
        ({"prompt": ""}, "empty-turn", "the prompt is empty"),
    ],
)
def test_an_unusable_pku_row_is_refused_or_left_out_by_reason(change, reason, detail):
    with pytest.raises(ValidationError) as excinfo:
        import_preferences(jsonl(ROWS[1], {**ROWS[0], **change}), fmt="pku-saferlhf", source="pku")
    assert excinfo.value.messages == [f"line 2: {detail} ({reason})"]
    assert Comparison.objects.count() == 0
    result = import_preferences(jsonl(ROWS[1], {**ROWS[0], **change}), fmt="pku-saferlhf", source="pku",
                                skip_invalid=True)
    assert (result.created, result.rejected) == (2, {reason: 1})


def test_the_command_and_the_api_take_the_format(tmp_path):
    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    out = io.StringIO()
    call_command("import_preferences", str(path), "--format", "pku-saferlhf", "--source", "pku", stdout=out,
                 verbosity=0)
    assert out.getvalue().strip() == (
        f"Imported 4 comparisons (0 already present) from 2 rows of {path} into batches "
        "'Imported: pku (helpfulness)', 'Imported: pku (safety)'.")

    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    r = client.post("/api/v1/imports/preferences/?format=pku-saferlhf&source=pku-api&focus=safety",
                    {"file": io.BytesIO(path.read_bytes())}, format="multipart")
    assert r.status_code == 201
    assert (r.json()["created"], r.json()["batches"]) == (2, ["Imported: pku-api (safety)"])
