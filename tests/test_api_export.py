"""The export endpoint streams what the export service writes, and refuses unknown options."""

import io
import json

import pyarrow.parquet as pq
import pytest
from rest_framework.test import APIClient

from annotation import services
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 3, turns=[("user", "Hi"), ("assistant", "Hello"), ("user", "A joke?")])
    for strength in ("significantly_better", "better", "negligibly_better"):
        lease = services.claim_next_task(alice, batch.pk)
        services.submit_comparison(alice, lease.task_id, services.LabelInput(chosen="B", strength=strength))
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    return client, batch


def test_jsonl_export_streams_one_trl_row_per_comparison(labelled):
    client, batch = labelled
    response = client.get("/api/v1/preferences/export/", {"format": "jsonl", "batches": str(batch.pk),
                                                            "margin": "large"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert len(rows) == 3
    assert sorted(r["margin"] for r in rows) == [0, 2, 3]
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                             {"role": "user", "content": "A joke?"}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"].startswith("Answer B")


def test_parquet_export_is_a_valid_file(labelled):
    client, batch = labelled
    response = client.get("/api/v1/preferences/export/", {"format": "parquet"})
    table = pq.read_table(io.BytesIO(b"".join(response.streaming_content)))
    assert table.num_rows == 3 and {"prompt", "chosen", "rejected", "margin", "split"} <= set(table.column_names)


@pytest.mark.parametrize("query", [{"format": "csv"}, {"format": "jsonl", "colour": "red"},
                                   {"format": "jsonl", "margin": "huge"}, {"format": "jsonl", "split": "dev"}])
def test_unknown_formats_and_options_are_a_400_with_a_message(labelled, query):
    client, _ = labelled
    response = client.get("/api/v1/preferences/export/", query)
    assert response.status_code == 400 and response.json()["error"]["detail"]
