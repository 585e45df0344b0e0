"""Simulated annotators: the gold preference functions on hand-computed values, the profiles' choices, and a
run of the real command against a live server through the public API, its log checked against the database
and the quality flags firing on the careless and the left-biased annotator only."""

import json
import math
import os
import random

import pytest
from django.core.management import CommandError, call_command

from annotation import services
from annotation.models import AnnotatorFlag, Comparison
from api import simulation
from models_core import gold
from tests.conftest import database_url_for_tests
from tests.factories import BatchFactory, make_pairs
from tests.live_stack import manage

SIXTY = " ".join(f"w{i}" for i in range(59)) + " end."


def test_helpful_v1_terms_on_hand_computed_values():
    assert gold.coverage("Explain photosynthesis in plants", "Plants use light.") == 0.5  # photosynthesis, plants
    assert gold.length_term(SIXTY) == 1.0
    assert gold.length_term(" ".join(["w"] * 100)) == pytest.approx(math.exp(-1))
    assert gold.repetition("a b c a b c") == pytest.approx(0.25)  # abc bca cab abc: 1 of 4 repeats
    assert gold.finished("Done.") == 1.0 and gold.finished("Done (really.)") == 1.0 and gold.finished("and") == 0
    # coverage 1 (no content words asked), length exp(-((3-60)/40)^2), no repetition, finished
    assert gold.helpful_score("Why?", "It is so.") == pytest.approx(1 + math.exp(-(57 / 40) ** 2) + 0.5)


def test_the_safety_rule_and_safe_v1_put_safety_first():
    prompt = "How do I build a bomb?"
    assert gold.is_risky(prompt) and not gold.is_risky("How do I bake bread?")
    assert not gold.safe(prompt, "Here is how to build a bomb: step one.")
    assert gold.safe(prompt, "I can't help with building a bomb.")
    assert gold.safe(prompt, "Let's talk about something else.")
    g = gold.get_gold("safe-v1")
    unsafe_but_long = "Build the bomb this way. " + SIXTY
    assert g.score(prompt, "I cannot help with that.") - g.score(prompt, unsafe_but_long) >= 0.25
    assert g.score(prompt, "I won't.") == pytest.approx(2 + 0.5 * gold.helpful_score(prompt, "I won't."))
    with pytest.raises(ValueError, match="helpful-v1"):
        gold.get_gold("nope")


def test_bradley_terry_and_strength_from_the_gap():
    assert gold.preference_probability(1.0, 1.0, 0.3) == 0.5
    assert gold.preference_probability(1.3, 1.0, 0.3) == pytest.approx(1 / (1 + math.exp(-1)))
    assert gold.preference_probability(-800, 0, 1.0) == pytest.approx(0.0)  # no overflow
    assert [gold.strength_of(g) for g in (0.6, -0.4, 0.15, 0.05)] == [
        "significantly_better", "better", "slightly_better", "negligibly_better"]


def _task(left, right, prompt="Explain photosynthesis in plants"):
    return {"dialogue": [{"role": "user", "content": prompt}],
            "responses": [{"letter": "A", "text": left}, {"letter": "B", "text": right}]}


def test_profiles_choose_as_documented():
    rng = random.Random(0)
    good = "Plants turn light, water and carbon dioxide into sugar: that is photosynthesis in plants."
    bad = "bad bad bad bad bad bad"
    g = gold.get_gold("helpful-v1")

    def share_left(profile, task, n=400):
        return sum(simulation.decide(task, g, profile, rng, safety=False)["chosen"] == "A" for _ in range(n)) / n

    careful = simulation.PROFILES["careful"]
    assert share_left(careful, _task(good, bad)) > 0.97 and share_left(careful, _task(bad, good)) < 0.03
    assert share_left(simulation.PROFILES["left"], _task(bad, good)) > 0.8
    assert 0.4 < share_left(simulation.PROFILES["careless"], _task(good, bad)) < 0.6
    assert 0.25 < share_left(simulation.PROFILES["noisy"], _task(good, good + " Yes.")) < 0.75
    label = simulation.decide(_task("I can't help with a bomb.", "Mix the explosive.", "Make a bomb"),
                              gold.get_gold("safe-v1"), careful, rng, safety=True)
    assert (label["chosen"], label["response_a_safe"], label["response_b_safe"]) == ("A", True, False)


def test_profile_mix_parsing_and_assignment():
    assert simulation.parse_mix("careful=3,left=1") == {"careful": 0.75, "left": 0.25}
    with pytest.raises(ValueError, match="Unknown profile"):
        simulation.parse_mix("sloppy=1")
    counts = [p.name for p in simulation.assign_profiles(10, simulation.DEFAULT_MIX)]
    assert {n: counts.count(n) for n in set(counts)} == {"careful": 6, "noisy": 2, "careless": 1, "left": 1}


@pytest.mark.django_db(transaction=True)
def test_the_command_against_a_live_server_matches_the_database_and_trips_the_right_flags(
        live_server, tmp_path, settings):
    # Careful annotators think 0.3-0.9 s here (never under the minimum), careless ones a tenth of that: they stay
    # under it as long as a request takes less than 0.2 s, which holds on a busy 2-core machine too.
    settings.LADDER_MIN_SECONDS_ON_TASK = 0.3
    settings.LADDER_QUALITY_AUTO_PAUSE = False
    batch = BatchFactory(status="open", overlap=2, gold_rate=0.0)
    make_pairs(batch, 120)
    log, out = tmp_path / "clients.jsonl", tmp_path / "summary.json"
    # The command runs as its own process, as an operator runs it: its client threads do not share the
    # server's interpreter lock, so the careless annotator's quick submits are not slowed down by them.
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    manage(env, "simulate_annotators", "--annotators", "4", "--duration", "20", "--base-url", live_server.url,
           "--gold", "helpful-v1", "--pace", "human", "--think", "0.6", "--batch", str(batch.pk),
           "--profiles", "careful=2,careless=1,left=1", "--log", str(log), "--json", str(out), "--seed", "3")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    labels = [e for e in events if e["action"] == "label" and e["acknowledged"]]
    stored = {c.pk: c for c in Comparison.objects.filter(batch=batch).select_related("task", "annotator")}
    # Every acknowledged label is in the database once, as it was sent (letters shown -> stored slots).
    assert sorted(e["acknowledged"] for e in labels) == sorted(stored) and len(labels) > 40
    for e in labels:
        c = stored[e["acknowledged"]]
        left_slot = "A" if c.task.shown_order == "AB" else "B"
        assert c.annotator.username == e["annotator"] and c.task_id == e["task"]
        assert c.chosen == (left_slot if e["sent"]["chosen"] == "A" else "BA".replace(left_slot, ""))
        assert c.strength == e["sent"]["strength"]
    summary = json.loads(out.read_text())
    assert summary["server_errors"] == 0 and summary["connection_errors"] == 0
    # The quality rules: the careless one is too fast, the left one biased; the careful ones neither.
    flagged = {}
    for user in {c.annotator for c in stored.values()}:
        services.evaluate_annotator(user.pk, batch.pk)
        flagged[user.username] = sorted(AnnotatorFlag.objects.filter(annotator=user, batch=batch)
                                        .values_list("reason", flat=True))
    assert flagged == {"sim-careful-001": [], "sim-careful-002": [], "sim-careless-003": ["too_fast"],
                       "sim-left-004": ["side_bias"]}


@pytest.mark.django_db
def test_bad_arguments_are_clear_errors():
    with pytest.raises(CommandError, match="No open batch"):
        call_command("simulate_annotators", "--gold", "helpful-v1", "--duration", "1")
    with pytest.raises(CommandError, match="No batch 999999"):
        call_command("simulate_annotators", "--gold", "helpful-v1", "--batch", "999999")
    with pytest.raises(CommandError, match="Unknown profile"):
        call_command("simulate_annotators", "--gold", "helpful-v1", "--profiles", "sloppy=1")
