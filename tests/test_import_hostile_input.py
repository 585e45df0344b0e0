"""Hostile input never reaches a traceback: through the commands and the API, each of these is a clear,
line-numbered error (or a 4xx saying how to send the file) and nothing is written."""

import gzip
import io
import json
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation.models import AnnotationBatch, Comparison, Prompt
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

GOOD = {
    "jsonl": json.dumps({"prompt": "Fine prompt"}),
    "hh-rlhf": json.dumps({"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"}),
    "trl": json.dumps({"prompt": "Q", "chosen": "good", "rejected": "bad"}),
    "pku-saferlhf": json.dumps({"prompt": "Q", "response_0": "a", "response_1": "b", "better_response_id": 0,
                                "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}),
}
# Hostile lines: each fails in the JSON parser or right after it, whatever the format.
HOSTILE = {
    "long integer": ('{"prompt": ' + "7" * 5000 + "}", "line 2: not valid JSON: a number has more than 4,300 digits"),
    "deep nesting": ('{"prompt": ' + "[" * 5000 + "]" * 5000 + "}", "line 2: not valid JSON: nested too deeply"),
    "lone surrogate": ('{"prompt": "\\ud800", "chosen": "\\ud800", "rejected": "x", "response_0": "\\udfff"}',
                       "line 2: a string holds an unpaired surrogate escape (such as \\ud800), which is not text"),
}
CSV_HOSTILE = {
    "long integer": ('"[{""role"": ""user"", ""content"": ' + "7" * 5000 + '}]"',
                     "line 3: 'messages': not valid JSON: a number has more than 4,300 digits"),
    "deep nesting": ('"' + "[" * 5000 + "]" * 5000 + '"', "line 3: 'messages': not valid JSON: nested too deeply"),
    "lone surrogate": ('"[{""role"": ""user"", ""content"": ""\\ud800""}]"',
                       "line 3: 'messages': a string holds an unpaired surrogate escape"),
}


@pytest.fixture
def staff():
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    return client


def written() -> tuple[int, int, int]:
    return Prompt.objects.count(), Comparison.objects.count(), AnnotationBatch.objects.filter(
        name__startswith="Imported:").count()


def command_args(fmt: str, batch) -> tuple[str, list[str]]:
    if fmt in ("jsonl", "csv"):
        return "import_prompts", ["--batch", str(batch.pk), "--format", fmt]
    return "import_preferences", ["--format", fmt, "--source", "hostile"]


def api_url(fmt: str, batch) -> str:
    if fmt in ("jsonl", "csv"):
        return f"/api/v1/imports/prompts/?batch={batch.pk}&format={fmt}"
    return f"/api/v1/imports/preferences/?format={fmt}&source=hostile"


def both_refuse(staff, tmp_path, fmt: str, body: bytes, message: str, *, exact=False):
    """The command and the API refuse ``body`` with ``message`` and write nothing."""
    batch = BatchFactory()
    path = tmp_path / f"input.{'csv' if fmt == 'csv' else 'jsonl'}"
    path.write_bytes(body)
    command, args = command_args(fmt, batch)
    with pytest.raises(CommandError) as excinfo:
        call_command(command, str(path), *args, verbosity=0)
    detail = str(excinfo.value).removeprefix(f"{path}: ")
    assert detail == f"{message} (nothing was imported)" if exact else detail.startswith(message), detail
    r = staff.post(api_url(fmt, batch), {"file": io.BytesIO(body)}, format="multipart")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["detail"] == message if exact else r.json()["error"]["detail"].startswith(message)
    assert written() == (0, 0, 0)


@pytest.mark.parametrize("fmt", ["jsonl", "hh-rlhf", "trl", "pku-saferlhf"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_json_is_a_line_numbered_error_in_every_jsonl_format(staff, tmp_path, fmt, case):
    line, message = HOSTILE[case]
    both_refuse(staff, tmp_path, fmt, f"{GOOD[fmt]}\n{line}\n".encode(), message)


@pytest.mark.parametrize("case", list(CSV_HOSTILE))
def test_hostile_json_in_a_csv_messages_column_is_a_line_numbered_error(staff, tmp_path, case):
    field, message = CSV_HOSTILE[case]
    body = f'messages\n"[{{""role"": ""user"", ""content"": ""fine""}}]"\n{field}\n'.encode()
    both_refuse(staff, tmp_path, "csv", body, message)


def test_a_csv_quote_that_never_closes_is_refused_at_the_line_it_opened_on(staff, tmp_path):
    body = b'prompt,category\nFirst,a\n"Second, never closed,b\nThird,c\nFourth,d\n'
    both_refuse(staff, tmp_path, "csv", body,
                "line 3: a quoted field opens on this line and is never closed (an unbalanced quote)", exact=True)


def test_a_csv_quote_closed_by_a_later_quote_is_refused_at_the_line_it_opened_on(staff, tmp_path):
    body = b'prompt,category\n"First,a\nSecond,b\nThird says "hi" here,c\nFourth,d\n'
    both_refuse(staff, tmp_path, "csv", body,
                "line 2: the quoted field that opens on this line closes on line 4 with more text after its "
                'closing quote (an unbalanced or unescaped quote; write a quote inside a quoted field as "")',
                exact=True)


def test_a_quoted_multi_line_csv_field_is_still_read(staff, tmp_path):
    body = b'prompt,category\n"Two\nlines, one ""quote""",a\nNext,b\n'
    batch = BatchFactory()
    r = staff.post(f"/api/v1/imports/prompts/?batch={batch.pk}&format=csv", {"file": io.BytesIO(body)},
                   format="multipart")
    assert (r.status_code, r.json()["created"]) == (201, 2)
    assert Prompt.objects.filter(messages__0__content='Two\nlines, one "quote"').exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "hh-rlhf", "trl", "pku-saferlhf"])
def test_an_empty_file_writes_nothing_and_says_it_is_empty(staff, tmp_path, fmt):
    both_refuse(staff, tmp_path, fmt, b"", "the file is empty", exact=True)


def test_a_file_of_blank_lines_or_a_csv_header_alone_has_no_rows(staff, tmp_path):
    both_refuse(staff, tmp_path, "trl", b"\n  \n", "the file has only blank lines: there are no rows", exact=True)
    both_refuse(staff, tmp_path, "csv", b"prompt,category\n", "the CSV file has a header but no rows", exact=True)


def test_damaged_gzip_is_a_line_numbered_error(staff, tmp_path):
    data = gzip.compress(("\n".join([GOOD["trl"]] * 50) + "\n").encode())
    both_refuse(staff, tmp_path, "trl", data[: len(data) // 2], "line 1: the gzip data is damaged or cut short")


# --- raw bodies --------------------------------------------------------------------------------------------

PAIR = (GOOD["trl"] + "\n").encode()
RAW_URL = "/api/v1/imports/preferences/?format=trl&source=raw"


def test_a_raw_ndjson_body_with_a_content_disposition_filename_is_read(staff):
    r = staff.generic("POST", RAW_URL, PAIR, content_type="application/x-ndjson",
                      headers={"Content-Disposition": 'attachment; filename="pairs.jsonl"'})
    assert (r.status_code, r.json()["created"], r.json()["lines"]) == (201, 1, 1)


def test_a_chunked_raw_body_is_read_where_the_server_decodes_it(staff):
    # gunicorn decodes chunked bodies and says so with wsgi.input_terminated; there is no Content-Length.
    r = staff.generic("POST", RAW_URL, PAIR, content_type="application/x-ndjson", CONTENT_LENGTH="",
                      HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": io.BytesIO(PAIR),
                                                           "wsgi.input_terminated": True})
    assert (r.status_code, r.json()["created"], r.json()["lines"]) == (201, 1, 1)


def test_a_chunked_raw_body_the_server_cannot_read_is_a_411_saying_how_to_send_it(staff):
    # runserver passes a chunked body undecoded and without a length: Django would see an empty body.
    r = staff.generic("POST", RAW_URL, PAIR, content_type="application/x-ndjson", CONTENT_LENGTH="",
                      HTTP_TRANSFER_ENCODING="chunked")
    assert r.status_code == 411
    assert "multipart/form-data field 'file'" in r.json()["error"]["detail"]
    assert "--data-binary" in r.json()["error"]["detail"]
    assert written() == (0, 0, 0)


def test_gzip_bodies_are_read_raw_and_as_multipart(staff):
    data = gzip.compress(PAIR)
    r = staff.generic("POST", RAW_URL, data, content_type="application/gzip")
    assert (r.status_code, r.json()["created"]) == (201, 1)
    batch = BatchFactory()
    body = gzip.compress(b'{"prompt": "compressed"}\n')
    r = staff.post(f"/api/v1/imports/prompts/?batch={batch.pk}&format=jsonl", {"file": io.BytesIO(body)},
                   format="multipart")
    assert (r.status_code, r.json()["created"]) == (201, 1)


def test_a_form_encoded_body_is_a_415_saying_how_to_send_the_file(staff):
    r = staff.generic("POST", RAW_URL, PAIR, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    assert "multipart/form-data field 'file'" in r.json()["error"]["detail"]
    assert written() == (0, 0, 0)


def test_an_empty_raw_body_is_a_400_not_a_silent_zero(staff):
    r = staff.generic("POST", RAW_URL, b"", content_type="application/x-ndjson")
    assert (r.status_code, r.json()["error"]["detail"]) == (400, "the file is empty")
    assert written() == (0, 0, 0)


# --- command-line arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "shown"), [
    (["import_preferences", "FILE", "--format", "trl", "--source", b"\xff"], "\\xff"),
    (["import_prompts", "FILE", "--batch", "1", "--source", b"caf\xe9"], "caf\\xe9"),
])
def test_a_command_line_argument_that_is_not_utf8_is_a_clear_error(tmp_path, command, shown):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(PAIR)
    argv = [sys.executable, "manage.py", *[str(path) if a == "FILE" else a for a in command]]
    done = subprocess.run(argv, cwd=settings.BASE_DIR, capture_output=True, timeout=120, check=False)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"CommandError: --source '{shown}' is not valid UTF-8 text."
