"""Fuzzing the imports: generated hostile files for every format, through the command (and so the import
service) and through the API. Whatever the input: no exception but the command's CommandError, no 5xx, and
nothing written when the import is refused. Bounded (50 examples a format, no example database) so the
suite stays fast."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from annotation.models import AnnotationBatch, Comparison, Dialogue, Prompt, Response, Turn
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=50, deadline=None, database=None,
    # One database transaction (the test's) holds every example; each example compares counts itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Raw JSON fragments no encoder would produce but a hostile file can hold.
FRAGMENTS = st.sampled_from([
    "7" * 5000, "-" + "9" * 4301, "[" * 3000 + "]" * 3000, '{"a":' * 2000 + "1" + "}" * 2000,
    '"\\ud800"', '"x\\udfff"', '"\\ud83d\\ude00"', '"\\u0000"', "NaN", "-Infinity", "1e999999", "1.5e-999",
    '"\\', "{", "]", "", "null", "true", '""', '"   "', '"\\n\\nHuman: \\n\\nAssistant: "',
])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TEXT = st.text(max_size=12) | st.sampled_from(["", "  ", "\x00", "same", "Human:", "\n\nAssistant: x"])
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "", "USER"]) | TEXT,
                           "content": TEXT | JSON_VALUES}),
    max_size=4,
)
TRANSCRIPT = st.lists(st.tuples(st.sampled_from(["Human", "Assistant", "human", "System"]), TEXT), max_size=4).map(
    lambda turns: "".join(f"\n\n{role}: {text}" for role, text in turns)
) | TEXT

FIELDS = {
    "jsonl": {"prompt": TEXT, "messages": MESSAGES, "category": TEXT, "risk_category": TEXT,
              "is_safety": st.booleans() | TEXT},
    "hh-rlhf": {"chosen": TRANSCRIPT, "rejected": TRANSCRIPT},
    "trl": {"prompt": TEXT | MESSAGES, "chosen": TEXT | MESSAGES, "rejected": TEXT | MESSAGES},
    "pku-saferlhf": {"prompt": TEXT, "response_0": TEXT, "response_1": TEXT,
                     "better_response_id": st.sampled_from([0, 1, 2, -1, True]),
                     "safer_response_id": st.sampled_from([0, 1, 2, -1, True]),
                     "is_response_0_safe": st.booleans() | SCALARS, "is_response_1_safe": st.booleans() | SCALARS},
}


@st.composite
def jsonl_line(draw, fmt: str) -> bytes:
    fields = FIELDS[fmt]
    row = {}
    for key, strategy in fields.items():
        if draw(st.booleans()) or len(fields) <= 2:
            row[key] = draw(strategy | JSON_VALUES) if draw(st.integers(0, 4)) == 0 else draw(strategy)
    text = json.dumps(row, ensure_ascii=draw(st.booleans()))
    kind = draw(st.integers(0, 5))
    if kind == 0:  # one field holds a raw hostile fragment
        key = draw(st.sampled_from(list(fields)))
        text = json.dumps({k: v for k, v in row.items() if k != key})[:-1].rstrip()
        text = f"{text}{', ' if len(text) > 1 else ''}\"{key}\": {draw(FRAGMENTS)}}}"
    elif kind == 1:  # a cut-off line
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == 2:  # arbitrary bytes
        return draw(st.binary(max_size=40))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def csv_file(draw) -> bytes:
    header = draw(st.sampled_from(["prompt", "prompt,category", "messages", "prompt,is_safety,risk_category",
                                   "prompt,prompt", "x", ""]))
    cell = st.text(alphabet='ab ,"\n\r\\{}[]:', max_size=16) | FRAGMENTS | MESSAGES.map(json.dumps)
    rows = draw(st.lists(st.lists(cell, min_size=1, max_size=3).map(_csv_row), max_size=4))
    return "\n".join([header, *rows]).encode("utf-8", "surrogatepass")


def _csv_row(cells: list[str]) -> str:
    # Half the cells quoted properly; the others as they are, stray quotes and all.
    return ",".join('"' + c.replace('"', '""') + '"' if len(c) % 2 == 0 else c for c in cells)


def jsonl_file(fmt: str):
    return st.lists(jsonl_line(fmt), max_size=4).map(lambda lines: b"\n".join(lines))


def counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (AnnotationBatch, Prompt, Dialogue, Turn, Response, Comparison))


class Target:
    """The command and the API for one format."""

    def __init__(self, fmt: str, path, client: APIClient):
        self.fmt, self.path, self.client = fmt, path, client
        self.batch = BatchFactory()

    def command(self, body: bytes) -> bool:
        self.path.write_bytes(body)
        if self.fmt in ("jsonl", "csv"):
            args = ["import_prompts", str(self.path), "--batch", str(self.batch.pk), "--format", self.fmt]
        else:
            args = ["import_preferences", str(self.path), "--format", self.fmt, "--source", "fuzz", "--skip-invalid",
                    "--rejects", str(self.path.with_suffix(".rejects"))]
        try:
            call_command(*args, verbosity=0, stdout=io.StringIO())
        except CommandError:
            return False
        return True

    def api(self, body: bytes) -> bool:
        if self.fmt in ("jsonl", "csv"):
            url = f"/api/v1/imports/prompts/?batch={self.batch.pk}&format={self.fmt}"
        else:
            url = f"/api/v1/imports/preferences/?format={self.fmt}&source=fuzz-api"
        r = self.client.post(url, {"file": io.BytesIO(body)}, format="multipart")
        assert r.status_code < 500, r.content
        assert r.status_code in (201, 400), r.content
        return r.status_code == 201

    def check(self, body: bytes) -> None:
        for attempt in (self.command, self.api):
            before = counts()
            if not attempt(body):
                assert counts() == before, f"{attempt.__name__} refused the file but wrote rows"


@pytest.fixture
def target(tmp_path):
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    return lambda fmt: Target(fmt, tmp_path / "fuzz.in", client)


@pytest.mark.parametrize("fmt", ["jsonl", "hh-rlhf", "trl", "pku-saferlhf"])
def test_generated_jsonl_files_never_break_the_import(target, fmt):
    t = target(fmt)

    @FUZZ
    @given(jsonl_file(fmt))
    def run(body):
        t.check(body)

    run()


def test_generated_csv_files_never_break_the_import(target):
    t = target("csv")

    @FUZZ
    @given(csv_file())
    def run(body):
        t.check(body)

    run()
