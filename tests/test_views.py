"""The workspace over HTTP: log-in, roles, CSRF, 404 for others' work, htmx fragments, form errors,
escaping of untrusted text, and the Django admin."""

import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Comparison, ComparisonRevision, Focus
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def batch(alice):
    return BatchFactory(annotators=[alice])


@pytest.fixture
def client_alice(alice):
    c = Client()
    c.force_login(alice)
    return c


def _slots_in_shown_order(html: str) -> list[str]:
    return re.findall(r'name="chosen" value="([AB])" data-key="[ab]"', html)


@pytest.mark.parametrize("name", ["frontend:home", "frontend:labels"])
def test_anonymous_users_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_home_lists_only_the_batches_assigned_to_the_annotator(client_alice, batch):
    other = BatchFactory(name="Not yours")
    html = client_alice.get(reverse("frontend:home")).content.decode()
    assert batch.name in html and other.name not in html


def test_workspace_shows_a_pair_and_submit_over_htmx_brings_the_next_without_a_page(client_alice, batch):
    t1, t2 = make_pairs(batch, 2)
    page = client_alice.get(reverse("frontend:workspace", args=[batch.pk])).content.decode()
    assert "<html" in page and f'data-task="{t1.pk}"' in page
    key = re.search(r'name="idempotency_key" value="([0-9a-f-]+)"', page).group(1)
    response = client_alice.post(reverse("frontend:submit", args=[t1.pk]),
                                 {"chosen": "A", "strength": "better", "idempotency_key": key}, **HTMX)
    fragment = response.content.decode()
    assert response.status_code == 200 and "<html" not in fragment
    assert f'data-task="{t2.pk}"' in fragment and "Saved" in fragment
    c = Comparison.objects.get()
    assert (c.task_id, c.chosen, c.strength, c.idempotency_key) == (t1.pk, "A", "better", uuid.UUID(key))


def test_a_double_submit_over_http_makes_one_comparison(client_alice, batch):
    (task,) = make_pairs(batch, 1)
    client_alice.get(reverse("frontend:workspace", args=[batch.pk]))
    data = {"chosen": "B", "strength": "slightly_better", "idempotency_key": str(uuid.uuid4())}
    for _ in range(3):
        client_alice.post(reverse("frontend:submit", args=[task.pk]), data, **HTMX)
    assert Comparison.objects.count() == 1


def test_a_submit_without_strength_shows_the_error_and_saves_nothing(client_alice, batch):
    (task,) = make_pairs(batch, 1)
    client_alice.get(reverse("frontend:workspace", args=[batch.pk]))
    html = client_alice.post(reverse("frontend:submit", args=[task.pk]), {"chosen": "A"}, **HTMX).content.decode()
    assert "Not saved" in html and "how much better" in html
    assert 'value="A" data-key' in html and "checked" in html, "the choice made so far is kept"
    assert Comparison.objects.count() == 0


def test_a_safety_submit_without_safety_labels_shows_the_error(client_alice, alice):
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    (task,) = make_pairs(batch, 1)
    client_alice.get(reverse("frontend:workspace", args=[batch.pk]))
    html = client_alice.post(reverse("frontend:submit", args=[task.pk]),
                             {"chosen": "A", "strength": "better"}, **HTMX).content.decode()
    assert "safe or unsafe" in html
    assert Comparison.objects.count() == 0


def test_an_expired_lease_gives_a_clear_message_and_a_fresh_task(client_alice, batch):
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import Assignment

    t1, t2 = make_pairs(batch, 2)
    client_alice.get(reverse("frontend:workspace", args=[batch.pk]))
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    html = client_alice.post(reverse("frontend:submit", args=[t1.pk]),
                             {"chosen": "A", "strength": "better"}, **HTMX).content.decode()
    assert "ran out" in html and "Your label was not saved" in html
    assert 'data-task="' in html
    assert Comparison.objects.count() == 0


def test_someone_elses_task_id_is_404(client_alice, batch):
    bob = UserFactory()
    batch.annotators.add(bob)
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(bob, batch.pk)
    assert client_alice.get(reverse("frontend:task", args=[task.pk])).status_code == 404
    r = client_alice.post(reverse("frontend:submit", args=[task.pk]), {"chosen": "A", "strength": "better"})
    assert r.status_code == 404
    assert Comparison.objects.count() == 0


def test_a_batch_not_assigned_to_you_is_404(client_alice):
    other = BatchFactory()
    make_pairs(other, 1)
    assert client_alice.get(reverse("frontend:workspace", args=[other.pk])).status_code == 404


def test_a_post_without_csrf_token_is_refused(alice, batch):
    (task,) = make_pairs(batch, 1)
    c = Client(enforce_csrf_checks=True)
    c.force_login(alice)
    c.get(reverse("frontend:workspace", args=[batch.pk]))
    r = c.post(reverse("frontend:submit", args=[task.pk]), {"chosen": "A", "strength": "better"})
    assert r.status_code == 403
    assert Comparison.objects.count() == 0


def test_untrusted_text_is_escaped_in_the_page(client_alice, batch):
    make_pairs(batch, 1, texts={"a": "<script>alert(1)</script>", "b": '<img src=x onerror="alert(2)">'},
               turns=[("user", "<b>hi</b>")])
    html = client_alice.get(reverse("frontend:workspace", args=[batch.pk])).content.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=" in html
    assert "<b>hi</b>" not in html


def test_guideline_markdown_is_sanitised(client_alice, alice):
    batch = BatchFactory(annotators=[alice], guidelines="**Be kind** <script>alert(3)</script>"
                                                         ' <a href="javascript:alert(4)">x</a>')
    html = client_alice.get(reverse("frontend:guidelines", args=[batch.pk])).content.decode()
    assert "<strong>Be kind</strong>" in html
    assert "<script>alert(3)" not in html and "javascript:" not in html


def test_prompt_mode_over_htmx_shows_the_generating_state(client_alice, batch):
    html = client_alice.post(reverse("frontend:write_prompt", args=[batch.pk]), {"prompt": "Why is the sky blue?"},
                             **HTMX).content.decode()
    assert "Generating two responses" in html and 'hx-trigger="every 1s"' in html


@pytest.mark.parametrize("prompt", ["", "x" * 8001])
def test_prompt_form_errors_keep_the_text_and_save_nothing(client_alice, batch, prompt):
    html = client_alice.post(reverse("frontend:write_prompt", args=[batch.pk]), {"prompt": prompt},
                             **HTMX).content.decode()
    assert 'role="alert"' in html
    assert batch.dialogues.count() == 0


def test_annotator_changes_their_label_and_the_page_shows_its_history(client_alice, alice, batch):
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    c = services.submit_comparison(alice, task.pk, services.LabelInput(chosen="A", strength="better")).comparison
    r = client_alice.post(reverse("frontend:edit_label", args=[c.pk]), {"chosen": "B", "strength": "slightly_better"})
    assert r.status_code == 302
    assert ComparisonRevision.objects.filter(comparison=c, chosen="A").exists()
    html = client_alice.get(reverse("frontend:edit_label", args=[c.pk])).content.decode()
    shown = "A" if task.shown_order == "AB" else "B"  # the letter the annotator saw for slot A
    assert "History" in html and f": response {shown}, better" in html


def test_reviewers_see_every_label_in_their_batches_and_annotators_do_not(alice, batch):
    reviewer = UserFactory()
    batch.reviewers.add(reviewer)
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    services.submit_comparison(alice, task.pk, services.LabelInput(chosen="A", strength="better", note="hmm"))
    rc = Client()
    rc.force_login(reviewer)
    html = rc.get(reverse("frontend:review", args=[batch.pk])).content.decode()
    assert "alice" in html and "hmm" in html
    ac = Client()
    ac.force_login(alice)
    assert ac.get(reverse("frontend:review", args=[batch.pk])).status_code == 404


@pytest.mark.parametrize(
    "model", ["annotationbatch", "prompt", "dialogue", "response", "comparisontask", "assignment", "comparison",
              "comparisonrevision"],
)
def test_admin_changelists_load_with_filters_for_staff(admin_client, alice, batch, model):
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    c = services.submit_comparison(alice, task.pk, services.LabelInput(chosen="A", strength="better")).comparison
    services.revise_comparison(alice, c.pk, services.LabelInput(chosen="B", strength="better"))
    response = admin_client.get(reverse(f"admin:annotation_{model}_changelist"), {"q": "a"})
    assert response.status_code == 200
    if model == "comparison":
        # Related-field filters show only when there is a choice to make: a second batch and annotator.
        bob = UserFactory()
        other = BatchFactory(annotators=[bob], focus="safety")
        (t2,) = make_pairs(other, 1)
        services.claim_next_task(bob, other.pk)
        services.submit_comparison(bob, t2.pk, services.LabelInput(chosen="B", strength="slightly_better",
                                                                  response_a_safe=True, response_b_safe=False))
        html = admin_client.get(reverse("admin:annotation_comparison_changelist")).content.decode()
        for lookup in ("task__batch__id__exact=", "task__batch__focus__exact=", "strength__exact=",
                       "safety_category__exact=", "annotator__id__exact=", "created_at__gte="):
            assert f"?{lookup}" in html, lookup
        detail = admin_client.get(reverse("admin:annotation_comparison_change", args=[c.pk])).content.decode()
        assert "Comparison revisions" in detail


def test_label_history_cannot_be_edited_in_admin(admin_client):
    from django.contrib.admin.sites import site

    from annotation.models import ComparisonRevision as Rev

    admin = site._registry[Rev]
    assert not admin.has_change_permission(None) and not admin.has_add_permission(None)


def test_annotators_cannot_use_the_admin(client_alice):
    r = client_alice.get(reverse("admin:annotation_comparison_changelist"))
    assert r.status_code == 302 and "login" in r["Location"]


def test_pages_name_the_response_by_the_letter_shown_on_screen(client_alice, alice, batch):
    from annotation.models import ComparisonTask

    (task,) = make_pairs(batch, 1)
    ComparisonTask.objects.filter(pk=task.pk).update(shown_order="BA")  # slot B is on the left, shown as "A"
    services.claim_next_task(alice, batch.pk)
    services.submit_comparison(alice, task.pk, services.LabelInput(chosen="B", strength="better"))
    html = client_alice.get(reverse("frontend:labels")).content.decode()
    assert '<td data-label="Chosen">A</td>' in html and '<td data-label="Chosen">B</td>' not in html


def test_a_double_posted_prompt_form_makes_one_task(client_alice, batch):
    from annotation.models import ComparisonTask

    html = client_alice.get(reverse("frontend:prompt_form", args=[batch.pk]), **HTMX).content.decode()
    key = re.search(r'name="idempotency_key" value="([0-9a-f-]+)"', html).group(1)
    for _ in range(2):
        client_alice.post(reverse("frontend:write_prompt", args=[batch.pk]),
                          {"prompt": "Why is the sky blue?", "idempotency_key": key}, **HTMX)
    assert ComparisonTask.objects.count() == 1
