"""Fuzzing the imports: generated hostile files for every format, through the command (and so the import
service) and through the API. Whatever the input: no exception but the command's CommandError, no 5xx,
nothing written when the import is refused, and the command and the API read the same file the same way
(both refuse it, or both import the same number of rows). Bounded (50 examples a format, no example database) so the
suite stays fast; derandomized, so every run tries the same examples."""

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from annotation.models import AnnotationBatch, Comparison, Dialogue, Prompt, Response, Turn
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

FUZZ = settings(
    # derandomize: the same examples on every run, so a failure is reproducible and the suite is stable.
    max_examples=50, deadline=None, database=None, derandomize=True,
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
WORD = st.text(alphabet="abcdefghij XYZ", min_size=1, max_size=8).filter(str.strip)
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
    kind = draw(st.sampled_from(["fragment", "fragment", "cut", "bytes", "as is", "as is"]))
    if kind == "fragment":  # one field holds a raw hostile fragment
        key = draw(st.sampled_from(list(fields)))
        text = json.dumps({k: v for k, v in row.items() if k != key})[:-1].rstrip()
        text = f"{text}{', ' if len(text) > 1 else ''}\"{key}\": {draw(FRAGMENTS)}}}"
    elif kind == "cut":  # a cut-off line
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "bytes":
        return draw(st.binary(max_size=40))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def csv_file(draw) -> bytes:
    columns = draw(st.sampled_from([["prompt"], ["prompt", "category"], ["messages"], ["messages", "category"],
                                    ["prompt", "is_safety", "risk_category"], ["prompt", "prompt"], ["x"]]))
    text = st.text(alphabet='ab ,"\n\r\\{}[]:', max_size=16)
    messages = FRAGMENTS | MESSAGES.map(lambda m: json.dumps(m, ensure_ascii=False)) | MESSAGES.map(json.dumps)
    cells = {"messages": messages, "prompt": text | FRAGMENTS | WORD}
    row = st.tuples(*[cells.get(c, text) for c in columns]).map(list)
    # Sometimes a cell too many or too few.
    ragged = st.lists(text, min_size=1, max_size=len(columns) + 1)
    rows = draw(st.lists(row | row | row | ragged, max_size=4).map(lambda rs: [_csv_row(r) for r in rs]))
    return "\n".join([",".join(columns), *rows]).encode("utf-8", "surrogatepass")


def _csv_row(cells: list[str]) -> str:
    # Half the cells quoted properly; the others as they are, stray quotes and all.
    return ",".join('"' + c.replace('"', '""') + '"' if len(c) % 2 == 0 else c for c in cells)


@st.composite
def good_line(draw, fmt: str) -> bytes:
    """A row that imports, so that generated files reach the hostile lines after it."""
    q, a = draw(WORD), draw(WORD)
    b = draw(WORD.filter(lambda w: w.strip() != a.strip()))
    row = {
        "jsonl": {"prompt": q},
        "hh-rlhf": {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {b}"},
        "trl": {"prompt": q, "chosen": a, "rejected": b},
        "pku-saferlhf": {"prompt": q, "response_0": a, "response_1": b, "better_response_id": 0,
                         "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True},
    }[fmt]
    return json.dumps(row).encode()


def jsonl_file(fmt: str):
    lines = st.tuples(st.lists(good_line(fmt), max_size=2), jsonl_line(fmt),
                      st.lists(jsonl_line(fmt) | good_line(fmt), max_size=2))
    return lines.map(lambda parts: b"\n".join([*parts[0], parts[1], *parts[2]]))


def counts() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (AnnotationBatch, Prompt, Dialogue, Turn, Response, Comparison))


class Target:
    """The command and the API for one format."""

    def __init__(self, fmt: str, path, client: APIClient):
        self.fmt, self.path, self.client = fmt, path, client
        self.batch = BatchFactory()

    def command(self, body: bytes, skip_invalid: bool) -> int | None:
        self.path.write_bytes(body)
        if self.fmt in ("jsonl", "csv"):
            args = ["import_prompts", str(self.path), "--batch", str(self.batch.pk), "--format", self.fmt]
        else:
            args = ["import_preferences", str(self.path), "--format", self.fmt, "--source", "fuzz"]
            if skip_invalid:
                args += ["--skip-invalid", "--rejects", str(self.path.with_suffix(".rejects"))]
        out = io.StringIO()
        try:
            call_command(*args, verbosity=0, stdout=out)
        except CommandError:
            return None
        created, present = re.match(r"Imported ([\d,]+) \w+ \(([\d,]+) already present\)", out.getvalue()).groups()
        return int(created.replace(",", "")) + int(present.replace(",", ""))

    def api(self, body: bytes, skip_invalid: bool) -> int | None:
        if self.fmt in ("jsonl", "csv"):
            url = f"/api/v1/imports/prompts/?batch={self.batch.pk}&format={self.fmt}"
        else:
            url = f"/api/v1/imports/preferences/?format={self.fmt}&source=fuzz-api"
            if skip_invalid:
                url += "&skip_invalid=true"
        r = self.client.post(url, {"file": io.BytesIO(body)}, format="multipart")
        assert r.status_code < 500, r.content
        assert r.status_code in (201, 400), r.content
        return r.json()["created"] + r.json()["skipped"] if r.status_code == 201 else None

    def check(self, body: bytes, skip_invalid: bool) -> None:
        imported = []  # rows imported (created or already present), None when refused
        for attempt in (self.command, self.api):
            before = counts()
            imported.append(attempt(body, skip_invalid))
            if imported[-1] is None:
                assert counts() == before, f"{attempt.__name__} refused the file but wrote rows"
        assert imported[0] == imported[1], f"the command and the API read the file differently: {imported}"


@pytest.fixture
def target(tmp_path):
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    return lambda fmt: Target(fmt, tmp_path / "fuzz.in", client)


@pytest.mark.parametrize("fmt", ["jsonl", "hh-rlhf", "trl", "pku-saferlhf"])
def test_generated_jsonl_files_never_break_the_import(target, fmt):
    t = target(fmt)

    @FUZZ
    @given(jsonl_file(fmt), st.booleans())
    def run(body, skip_invalid):
        t.check(body, skip_invalid)

    run()


def test_generated_csv_files_never_break_the_import(target):
    t = target("csv")

    @FUZZ
    @given(csv_file())
    def run(body):
        t.check(body, skip_invalid=False)

    run()
