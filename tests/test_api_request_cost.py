"""What one annotation request costs the database (the load benchmark's findings, kept): the token is checked in
one query, the task is read once per request, and the next-task and submit requests stay within their query
budgets; an expired token is refused and deleted, and the sweep removes the ones nobody presents."""

import json
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from api.auth import delete_expired_tokens
from api.tokens import create_token
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db

# Counted with BEGIN, SAVEPOINT, RELEASE and COMMIT; before the load benchmark they were 16 and 15, with the token
# read twice and the task three times a cycle; the submit's access check and locked read are now one statement,
# the lease's and the label's inserts take ON CONFLICT DO NOTHING in place of a savepoint each, and statements
# that follow each other are merged (lapsed leases expired with the live one looked up; replay, key and lease
# read at once; the lease closed, the task's completion refreshed and the labels counted at once).
NEXT_TASK_BUDGET = 10
SUBMIT_BUDGET = 7


def _client(user):
    _, token = create_token(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _statements(captured, needle: str) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if needle in q["sql"]]


def test_a_cycle_stays_within_its_query_budget_reading_the_token_and_the_task_once_per_request():
    alice = UserFactory()
    create_token(alice)  # other tokens of the caller are not read on every request
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 2)
    client = _client(alice)
    with CaptureQueriesContext(connection) as next_queries:
        task = client.post(f"/api/v1/batches/{batch.pk}/next-task/").json()
    body = {"chosen": "A", "strength": "better", "idempotency_key": str(uuid.uuid4())}
    with CaptureQueriesContext(connection) as submit_queries:
        response = client.post(f"/api/v1/tasks/{task['id']}/comparison/", data=json.dumps(body),
                               content_type="application/json")
    assert response.status_code == 201
    for captured, budget in ((next_queries, NEXT_TASK_BUDGET), (submit_queries, SUBMIT_BUDGET)):
        assert len(captured.captured_queries) <= budget, "\n".join(q["sql"][:120] for q in captured)
        assert len(_statements(captured, '"knox_authtoken"')) == 1
    # the pair shown is read once (one plain statement with its turns); the submit reads the task once, locked
    assert len(_statements(next_queries, "annotation_response")) == 1
    assert len(_statements(next_queries, "annotation_turn")) == 1
    task_reads = [sql for sql in _statements(submit_queries, "annotation_comparisontask")
                  if sql.lstrip().startswith("SELECT") and "annotation_comparisontask t" in sql.split("WHERE")[0]]
    assert len(task_reads) == 1 and task_reads[0].rstrip().endswith("FOR UPDATE OF t"), task_reads
    for captured in (next_queries, submit_queries):  # one transaction each (a savepoint inside the test's), no more
        assert len([sql for sql in _statements(captured, "SAVEPOINT") if sql.startswith("SAVEPOINT")]) == 1


_KEY = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
LABEL_BODIES = [
    {"chosen": "A", "strength": "better"},
    {"chosen": "B", "strength": "negligibly_better", "response_a_safe": True, "response_b_safe": False,
     "note": "  <b>both</b> fine \n", "idempotency_key": _KEY},
    {"chosen": "A", "strength": "significantly_better", "response_a_safe": None, "note": "", "idempotency_key": None},
    {"chosen": "A", "strength": "better", "idempotency_key": "{" + _KEY.upper() + "}"},
    {"chosen": "A", "strength": "better", "idempotency_key": "urn:uuid:" + _KEY},
    {"chosen": "B", "strength": "slightly_better", "note": "x" * 20000, "extra": [1, 2]},
    {"chosen": "A", "strength": "better", "note": "   "},
    # what the serializer reads differently or refuses: each goes to it, and its answer is the one given
    {"chosen": "a", "strength": "better"}, {"chosen": "C", "strength": "better"}, {"chosen": 1, "strength": "better"},
    {"chosen": "A"}, {"strength": "better"}, {"chosen": "A", "strength": "much_better"},
    {"chosen": "A", "strength": "better", "response_a_safe": "true"},
    {"chosen": "A", "strength": "better", "response_b_safe": 1},
    {"chosen": "A", "strength": "better", "response_a_safe": "maybe"},
    {"chosen": "A", "strength": "better", "note": 5}, {"chosen": "A", "strength": "better", "note": None},
    {"chosen": "A", "strength": "better", "note": "x" * 20001},
    {"chosen": "A", "strength": "better", "note": "x" * 20000 + "   "},
    {"chosen": "A", "strength": "better", "note": "nul \x00 here"},
    {"chosen": "A", "strength": "better", "idempotency_key": "not-a-uuid"},
    {"chosen": "A", "strength": "better", "idempotency_key": 12345},
    {"chosen": "A", "strength": "better", "idempotency_key": ""},
    [], "A", None,
]


@pytest.mark.parametrize("body", LABEL_BODIES, ids=range(len(LABEL_BODIES)))
def test_the_submit_body_read_without_the_serializer_equals_the_serializer(body):
    from rest_framework.exceptions import ValidationError

    from api.serializers import ComparisonInputSerializer, _comparison_input_plain, comparison_input

    serializer = ComparisonInputSerializer(data=body)
    valid = serializer.is_valid()
    plain = _comparison_input_plain(body)
    if plain is not None:  # what the plain checks accept, the serializer accepts, with the same values
        assert valid and dict(serializer.validated_data) == plain
    if valid:
        assert dict(comparison_input(body)) == dict(serializer.validated_data)
    else:
        with pytest.raises(ValidationError) as raised:
            comparison_input(body)
        assert raised.value.detail == serializer.errors
    assert (plain is not None) == (LABEL_BODIES.index(body) < 7)  # the well-formed ones take the plain path



def test_an_expired_token_is_refused_and_deleted_and_the_sweep_removes_the_others():
    alice, bob = UserFactory(), UserFactory()
    client = _client(alice)
    _client(bob)
    AuthToken.objects.update(expiry=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/batches/").status_code == 401
    assert not AuthToken.objects.filter(user=alice).exists()
    assert AuthToken.objects.filter(user=bob).exists()  # not presented: left to the sweep
    live = _client(bob)
    assert delete_expired_tokens() == 1
    assert live.get("/api/v1/batches/").status_code == 200
    assert AuthToken.objects.filter(user=bob).count() == 1


def test_the_next_task_payload_read_in_one_query_equals_the_task_serializer():
    from annotation import selectors, services
    from annotation.models import ComparisonTask
    from api.serializers import TaskSerializer, task_data

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    tasks = make_pairs(batch, 2, turns=[("user", "Hi <b>there</b>"), ("assistant", "Hello"), ("user", "Joke?")])
    tasks += make_pairs(batch, 1)
    ComparisonTask.objects.filter(pk=tasks[1].pk).update(shown_order="BA")
    pending = make_pairs(batch, 1)[0]
    ComparisonTask.objects.filter(pk=pending.pk).update(status=ComparisonTask.Status.GENERATING, note="sampling")
    for task in [*tasks, pending]:
        lease = services.claim_next_task(alice, batch.pk, wait_seconds=0) if task is tasks[0] else None
        model = ComparisonTask.objects.select_related(*selectors.TASK_SHOWN).get(pk=task.pk)
        expected = TaskSerializer(model, context={"lease": lease}).data
        assert task_data(selectors.task_shown(task.pk), lease) == expected
    assert task_data(selectors.task_shown(tasks[0].pk), None)["dialogue"][0]["content"] == "Hi <b>there</b>"


@pytest.mark.parametrize(("shown_order", "safety"), [("AB", False), ("BA", True)])
def test_the_submit_payload_built_without_a_model_serializer_equals_the_comparison_serializer(shown_order, safety):
    from annotation import services
    from annotation.models import Comparison, ComparisonTask
    from api.serializers import ComparisonSerializer, comparison_data

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], focus="safety" if safety else "helpfulness")
    task = make_pairs(batch, 1)[0]
    ComparisonTask.objects.filter(pk=task.pk).update(shown_order=shown_order)
    services.claim_next_task(alice, batch.pk, wait_seconds=0)
    label = services.ShownLabel(chosen="B", strength="slightly_better", a_safe=True if safety else None,
                                b_safe=False if safety else None, note="<i>ok</i>")
    result = services.submit_comparison(alice, task.pk, label, idempotency_key=uuid.uuid4())
    stored = Comparison.objects.select_related("task", "annotator").get(pk=result.comparison.pk)
    expected = ComparisonSerializer(stored).data
    assert comparison_data(result.comparison) == expected
    assert expected["chosen"] == "B" and expected["chosen_slot"] == ("B" if shown_order == "AB" else "A")
    if safety:
        assert (expected["response_a_safe"], expected["response_b_safe"]) == (True, False)
