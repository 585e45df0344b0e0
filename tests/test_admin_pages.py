"""The Django admin as staff meet it: named for Ladder, time on task in seconds, labels on read-only pages
without Save or Delete (the page width at 1280 px is checked in a real browser, tests/test_browser.py)."""

from datetime import timedelta

import pytest
from django.urls import reverse

from annotation import services
from annotation.models import Comparison
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def comparison():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    c = services.submit_comparison(alice, task.pk, services.LabelInput(chosen="A", strength="better")).comparison
    Comparison.objects.filter(pk=c.pk).update(time_on_task=timedelta(seconds=83, milliseconds=400))
    return c


def test_the_admin_is_named_ladder_administration(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert '<div id="site-name"><a href="/admin/">Ladder administration</a></div>' in html
    assert "<title>Batches, labels, checkpoints | Ladder administration</title>" in html
    assert "Django administration" not in html


def test_time_on_task_is_shown_in_seconds(admin_client, comparison):
    listing = admin_client.get(reverse("admin:annotation_comparison_changelist")).content.decode()
    assert "Time on task (s)" in listing and '<td class="field-seconds_on_task">83.4</td>' in listing
    assert "0:01:23" not in listing
    detail = admin_client.get(reverse("admin:annotation_comparison_change", args=[comparison.pk])).content.decode()
    assert '<div class="readonly">83.4</div>' in detail and "0:01:23" not in detail


@pytest.mark.parametrize("model", ["comparison", "comparisonrevision"])
def test_label_pages_are_read_only_without_save_or_delete(admin_client, comparison, model):
    services.revise_comparison(comparison.annotator, comparison.pk,
                               services.LabelInput(chosen="B", strength="better"))
    obj = comparison if model == "comparison" else comparison.revisions.get()
    html = admin_client.get(reverse(f"admin:annotation_{model}_change", args=[obj.pk])).content.decode()
    assert f"View {obj._meta.verbose_name}" in html
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "deletelink" not in html
    listing = admin_client.get(reverse(f"admin:annotation_{model}_changelist")).content.decode()
    assert "delete_selected" not in listing
    before = Comparison.objects.get(pk=comparison.pk)
    post = admin_client.post(reverse(f"admin:annotation_{model}_change", args=[obj.pk]), {"chosen": "A"})
    assert post.status_code == 403
    assert Comparison.objects.get(pk=comparison.pk).chosen == before.chosen
