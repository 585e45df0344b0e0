"""My labels and the change-label page: the prompt and task of each label, a fixed choice shown disabled
with its reason before saving, and history entries that say when each old version was made."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation import generation, services
from annotation.models import Comparison, ComparisonRevision, Focus
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def client_alice(alice):
    c = Client()
    c.force_login(alice)
    return c


def label(user, task, chosen="A", strength="better", **safety):
    return services.submit_comparison(user, task.pk, services.LabelInput(chosen=chosen, strength=strength,
                                                                          **safety)).comparison


def test_my_labels_shows_the_first_line_of_the_prompt_escaped_and_truncated_and_the_task(client_alice, alice):
    batch = BatchFactory(annotators=[alice])
    long_line = "<b>Plan</b> a picnic " + "with many friends " * 10
    task = make_pairs(batch, 1, turns=[("user", "\n" + long_line + "\nSecond line of the prompt")])[0]
    services.claim_next_task(alice, batch.pk)
    label(alice, task)
    html = client_alice.get(reverse("frontend:labels")).content.decode()
    row = re.search(r'<tr><td data-label="When">.*?</tr>', html, re.S).group(0)
    assert f'<td data-label="Task">{task.pk}</td>' in row
    cell = re.search(r'<td class="prompt-cell"[^>]*>(.*?)</td>', row, re.S).group(1)
    assert cell.startswith("&lt;b&gt;Plan&lt;/b&gt; a picnic with many friends")
    assert cell.endswith("…") and len(cell.replace("&lt;", "<").replace("&gt;", ">")) == 80
    assert "Second line" not in row and "<b>Plan" not in html


def test_my_labels_shows_the_turn_that_a_continued_pair_answers(client_alice, alice):
    batch = BatchFactory(annotators=[alice])
    first = services.start_prompt_task(alice, batch.pk, "Plan a picnic")
    generation.sample_pairs(first.pk)
    comparison = label(alice, first)
    second = services.continue_dialogue(alice, comparison.pk, "Now for ten people")
    generation.sample_pairs(second.pk)
    label(alice, second)
    html = client_alice.get(reverse("frontend:labels")).content.decode()
    cells = re.findall(r'<td class="prompt-cell"[^>]*>(.*?)</td>', html)
    assert cells == ["Now for ten people", "Plan a picnic"]  # newest first


def continued_label(alice):
    batch = BatchFactory(annotators=[alice])
    task = services.start_prompt_task(alice, batch.pk, "Plan a picnic")
    generation.sample_pairs(task.pk)
    comparison = label(alice, task, chosen="A")
    services.continue_dialogue(alice, comparison.pk, "For ten people")
    return comparison


def test_a_choice_that_can_no_longer_change_is_disabled_with_its_reason(client_alice, alice):
    comparison = continued_label(alice)
    html = client_alice.get(reverse("frontend:edit_label", args=[comparison.pk])).content.decode()
    chosen_inputs = re.findall(r'<input type="radio" name="chosen"[^>]*>', html)
    assert len(chosen_inputs) == 2
    (other,) = [i for i in chosen_inputs if 'value="B"' in i]
    (kept,) = [i for i in chosen_inputs if 'value="A"' in i]
    assert "disabled" in other and 'aria-describedby="choice-fixed"' in other
    assert "disabled" not in kept and "checked" in kept
    assert 'id="choice-fixed"' in html and "You continued the dialogue from response" in html


def test_a_refused_flip_shows_the_saved_choice_and_the_error(client_alice, alice):
    comparison = continued_label(alice)
    response = client_alice.post(reverse("frontend:edit_label", args=[comparison.pk]),
                                 {"chosen": "B", "strength": "slightly_better"})
    html = response.content.decode()
    assert response.status_code == 200 and "cannot change" in html
    (kept,) = [i for i in re.findall(r'<input type="radio" name="chosen"[^>]*>', html) if 'value="A"' in i]
    assert "checked" in kept
    comparison.refresh_from_db()
    assert (comparison.chosen, comparison.strength) == ("A", "better")


def test_a_choice_that_can_change_is_not_disabled(client_alice, alice):
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    task = make_pairs(batch, 1)[0]
    services.claim_next_task(alice, batch.pk)
    comparison = label(alice, task, response_a_safe=True, response_b_safe=False)
    html = client_alice.get(reverse("frontend:edit_label", args=[comparison.pk])).content.decode()
    assert 'id="label-form"' in html  # the form the keyboard script drives
    assert "disabled" not in "".join(re.findall(r'<input type="radio" name="chosen"[^>]*>', html))
    assert 'id="choice-fixed"' not in html
    assert "<kbd>A</kbd>" in html and "<kbd>S</kbd>" in html and "<kbd>U</kbd>" in html


def test_history_entries_say_when_the_old_label_was_made_and_when_it_was_replaced(client_alice, alice):
    batch = BatchFactory(annotators=[alice])
    task = make_pairs(batch, 1)[0]
    services.claim_next_task(alice, batch.pk)
    comparison = label(alice, task, chosen="A", strength="better")
    made = timezone.now() - timedelta(days=3)
    Comparison.objects.filter(pk=comparison.pk).update(created_at=made)
    services.revise_comparison(alice, comparison.pk, services.LabelInput(chosen="B", strength="slightly_better"))
    first_change = timezone.now() - timedelta(days=2)
    ComparisonRevision.objects.filter(comparison=comparison).update(changed_at=first_change)
    services.revise_comparison(alice, comparison.pk, services.LabelInput(chosen="A", strength="negligibly_better"))
    html = client_alice.get(reverse("frontend:edit_label", args=[comparison.pk])).content.decode()
    entries = re.findall(r"<li>(Made .*?)</li>", html)
    fmt = "%Y-%m-%d %H:%M"
    local = timezone.localtime
    newest = ComparisonRevision.objects.filter(comparison=comparison).order_by("-changed_at").first()
    shown_b = "B" if task.shown_order == "AB" else "A"
    shown_a = "A" if task.shown_order == "AB" else "B"
    assert entries == [
        f"Made {local(first_change):{fmt}}, replaced {local(newest.changed_at):{fmt}} by alice: response {shown_b}, "
        "slightly better",
        f"Made {local(made):{fmt}}, replaced {local(first_change):{fmt}} by alice: response {shown_a}, better",
    ]
