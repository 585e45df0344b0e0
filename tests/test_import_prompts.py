"""Prompt imports: JSONL and CSV into a batch's pool, all or nothing, idempotent, streaming."""

import gzip
import io
import json
import logging
import os
import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection

from annotation import imports
from annotation.imports import ImportResult, import_prompts
from annotation.models import Focus, Prompt, RiskCategory
from tests.conftest import database_url_for_tests
from tests.factories import BatchFactory

pytestmark = pytest.mark.django_db
logger = logging.getLogger(__name__)


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode())


def csv_bytes(text: str) -> io.BytesIO:
    return io.BytesIO(text.encode())


def test_jsonl_text_and_message_rows_land_in_the_batch_pool():
    batch = BatchFactory()
    stream = jsonl(
        {"prompt": "  How do tides work?  ", "category": "science"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Tell me a joke."}]},
        "",
        {"prompt": "How do I pick a lock?", "risk_category": "illicit_criminal", "is_safety": True},
    )
    result = import_prompts(stream, batch=batch, fmt="jsonl", source="my-prompts")

    assert result == ImportResult(created=3, skipped=0, lines=3)
    first, second, third = Prompt.objects.filter(batch=batch).order_by("id")
    assert first.messages == [{"role": "user", "content": "How do tides work?"}]
    assert (first.category, first.source, first.is_safety, first.risk_category) == ("science", "my-prompts", False, "")
    assert first.content_hash == Prompt.hash_messages(first.messages)
    assert [m["role"] for m in second.messages] == ["user", "assistant", "user"]
    assert second.messages[2]["content"] == "Tell me a joke."
    assert (third.is_safety, third.risk_category) == (True, RiskCategory.ILLICIT_CRIMINAL)


def test_prompts_in_a_safety_batch_are_safety_prompts_unless_a_row_says_otherwise():
    batch = BatchFactory(focus=Focus.SAFETY)
    import_prompts(jsonl({"prompt": "a"}, {"prompt": "b", "is_safety": False}), batch=batch, fmt="jsonl")
    assert list(Prompt.objects.order_by("id").values_list("is_safety", flat=True)) == [True, False]


def test_csv_rows_with_text_messages_and_a_quoted_multi_line_prompt():
    batch = BatchFactory()
    messages = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                           {"role": "user", "content": "Plan a trip"}])
    quoted = messages.replace('"', '""')
    text = (
        "\ufeffprompt,messages,category,risk_category,is_safety\n"
        "What is 2+2?,,math,,\n"
        f',"{quoted}",travel,,no\n'
        '"A poem\nin two lines",,,other,yes\n'
    )
    result = import_prompts(csv_bytes(text), batch=batch, fmt="csv")

    assert result == ImportResult(created=3, skipped=0, lines=3)
    rows = list(Prompt.objects.order_by("id").values_list("messages", "category", "risk_category", "is_safety"))
    assert rows[0] == ([{"role": "user", "content": "What is 2+2?"}], "math", "", False)
    assert rows[1] == (json.loads(messages), "travel", "", False)
    assert rows[2] == ([{"role": "user", "content": "A poem\nin two lines"}], "", "other", True)


def test_re_importing_the_same_file_creates_nothing():
    batch = BatchFactory()
    rows = [{"prompt": f"Question {i}?"} for i in range(5)]
    assert import_prompts(jsonl(*rows), batch=batch, fmt="jsonl") == ImportResult(5, 0, 5)
    assert import_prompts(jsonl(*rows), batch=batch, fmt="jsonl") == ImportResult(0, 5, 5)
    assert Prompt.objects.count() == 5


def test_repeats_inside_one_file_are_skipped_across_chunks_and_the_same_prompt_may_go_to_another_batch():
    batch, other = BatchFactory(), BatchFactory()
    rows = [{"prompt": f"Question {i % 1500}?"} for i in range(2600)]  # 1,100 repeats, some a chunk later
    assert import_prompts(jsonl(*rows), batch=batch, fmt="jsonl") == ImportResult(1500, 1100, 2600)
    assert import_prompts(jsonl(*rows[:10]), batch=other, fmt="jsonl") == ImportResult(10, 0, 10)
    assert Prompt.objects.filter(batch=batch).count() == 1500


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "unterminated', "line 3: not valid JSON"),
        (json.dumps({"category": "x"}), "line 3: 'prompt' (or 'messages') is missing"),
        (json.dumps({"prompt": "   "}), "line 3: the prompt is empty"),
        (json.dumps({"prompt": "x", "risk_category": "spam"}), "line 3: unknown risk_category 'spam'"),
        (json.dumps({"prompt": "x", "is_safety": "yes"}), "line 3: 'is_safety' must be true or false"),
        (json.dumps(["a list"]), "line 3: expected a JSON object, got a list"),
        (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
         "line 3: 'messages' must end with a user turn"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
         "line 3: 'messages' message 1 has role 'assistant' where 'user' was expected"),
        (json.dumps({"messages": [{"role": "system", "content": "a"}]}), "line 3: 'messages' message 1 has role"),
    ],
)
def test_a_bad_line_names_the_line_and_nothing_is_written(bad_line, message):
    batch = BatchFactory()
    stream = jsonl({"prompt": "one"}, {"prompt": "two"}, bad_line, {"prompt": "four"}, {"prompt": "five"})
    with pytest.raises(ValidationError) as excinfo:
        import_prompts(stream, batch=batch, fmt="jsonl")
    assert excinfo.value.messages[0].startswith(message)
    assert Prompt.objects.count() == 0


def test_a_bad_line_after_several_written_chunks_rolls_back_all_of_them():
    batch = BatchFactory()
    rows = [{"prompt": f"Question {i}?"} for i in range(2500)]
    rows[2399] = {"prompt": ""}
    with pytest.raises(ValidationError, match="line 2400: the prompt is empty"):
        import_prompts(jsonl(*rows), batch=batch, fmt="jsonl")
    assert Prompt.objects.count() == 0


def test_a_prompt_over_the_length_limit_is_refused(settings):
    settings.LADDER_PROMPT_MAX_CHARS = 10
    with pytest.raises(ValidationError, match="line 2: the prompt has 11 characters; the limit is 10"):
        import_prompts(jsonl({"prompt": "short"}, {"prompt": "x" * 11}), batch=BatchFactory(), fmt="jsonl")
    assert Prompt.objects.count() == 0


def test_text_that_is_not_utf8_names_its_line():
    stream = io.BytesIO(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValidationError, match="line 2: not UTF-8"):
        import_prompts(stream, batch=BatchFactory(), fmt="jsonl")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("category\nx\n", "line 1: the CSV header needs a 'prompt' or a 'messages' column"),
        ('prompt,category\n"Line one\nline two",a\nfine,b\n,c\n', "line 5: the prompt is empty"),
        ("messages\n\"[{\"\"role\"\": \"\"user\"\"\"\n", "line 2: 'messages': not valid JSON"),
        ("prompt,risk_category\nok,\nalso ok,spam\n", "line 3: unknown risk_category 'spam'"),
        ("prompt,is_safety\nok,maybe\n", "line 2: 'is_safety' must be true or false"),
        ("prompt,category\nok,a,extra\n", "line 2: 3 fields, but the header has 2"),
    ],
)
def test_a_bad_csv_row_names_the_line_it_starts_on_and_nothing_is_written(text, message):
    with pytest.raises(ValidationError) as excinfo:
        import_prompts(csv_bytes(text), batch=BatchFactory(), fmt="csv")
    assert excinfo.value.messages[0].startswith(message)
    assert Prompt.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_imports_of_one_file_into_one_pool_both_succeed_and_add_it_once():
    batch = BatchFactory()
    data = b"".join(json.dumps({"prompt": f"Question {i}?"}).encode() + b"\n" for i in range(3000))
    start = threading.Barrier(2)
    results, errors = [], []

    def run():
        try:
            start.wait()
            results.append(import_prompts(io.BytesIO(data), batch=batch, fmt="jsonl"))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results, key=lambda r: r.created) == [ImportResult(0, 3000, 3000), ImportResult(3000, 0, 3000)]
    assert Prompt.objects.filter(batch=batch).count() == 3000


def test_progress_is_reported_per_chunk_and_adds_up_to_the_rows():
    calls = []
    rows = [{"prompt": f"Q{i}"} for i in range(2500)]
    import_prompts(jsonl(*rows), batch=BatchFactory(), fmt="jsonl", progress=calls.append)
    assert calls == [imports.CHUNK_SIZE, imports.CHUNK_SIZE, 2500 - 2 * imports.CHUNK_SIZE]


def test_the_command_reads_gzip_and_csv_and_prints_a_summary(tmp_path):
    batch = BatchFactory(name="Week 3")
    path = tmp_path / "prompts.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("prompt,category\n" + "".join(f"Question {i}?,quiz\n" for i in range(1500)))
    out = io.StringIO()
    call_command("import_prompts", str(path), batch=batch.pk, source="quiz", stdout=out, verbosity=0)
    assert out.getvalue().strip() == (
        f"Imported 1,500 prompts (0 already present) from {path} into batch {batch.pk} (Week 3)."
    )
    assert Prompt.objects.filter(batch=batch, source="quiz", category="quiz").count() == 1500


def test_the_command_reads_stdin(monkeypatch):
    batch = BatchFactory()
    data = b'{"prompt": "From a pipe"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    call_command("import_prompts", "-", batch=batch.pk, format="jsonl", stdout=io.StringIO(), verbosity=0)
    assert Prompt.objects.get().messages == [{"role": "user", "content": "From a pipe"}]


def test_the_command_fails_naming_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c", "risk_category": "bad"}\n')
    with pytest.raises(CommandError, match=r"line 3: unknown risk_category 'bad'.*\(nothing was imported\)"):
        call_command("import_prompts", str(path), batch=BatchFactory().pk, verbosity=0)
    assert Prompt.objects.count() == 0


def test_the_command_refuses_an_unknown_batch_or_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(CommandError, match="no batch with id 999999"):
        call_command("import_prompts", str(path), batch=999999, verbosity=0)
    with pytest.raises(CommandError, match="pass --format"):
        call_command("import_prompts", str(path), batch=BatchFactory().pk, verbosity=0)


# --- memory: a streamed import holds one chunk, whatever the file's size ---------------------------------

# Each import runs in a fresh process, so each peak is that import's own. Django's setup alone peaks at a few
# hundred MiB (the app registry imports the model code), so the wrapper also resets the kernel's high-water
# mark after setup (clear_refs 5) and reports the import's own growth above the RSS it started from.
_MEASURE = """
import resource, sys, time
import django
django.setup()

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    start_rss = status("VmRSS:")
except OSError:
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from django.core.management import call_command
start = time.monotonic()
call_command("import_prompts", sys.argv[1], batch=int(sys.argv[2]), verbosity=0)
seconds = time.monotonic() - start
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, status("VmHWM:") - start_rss, seconds)
"""


def _import_in_fresh_process(path, batch_id) -> tuple[int, int, float]:
    """(the process's peak RSS in KiB, the import's growth above its starting RSS in KiB, seconds)."""
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(batch_id)],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    peak, growth, seconds = done.stdout.split()[-3:]
    return int(peak), int(growth), float(seconds)


def _prompt_file(path, n: int) -> None:
    filler = "Please explain this in detail, with an example or two. " * 3
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Question {i}: {filler}", "category": f"c{i % 50}"}) + "\n")


@pytest.mark.django_db(transaction=True)
def test_a_streamed_import_of_100k_lines_peaks_at_the_memory_of_a_10k_line_import(tmp_path):
    small, large = tmp_path / "10k.jsonl", tmp_path / "100k.jsonl"
    _prompt_file(small, 10_000)
    _prompt_file(large, 100_000)  # 21 MB: holding it, or its rows, would show
    small_batch, large_batch = BatchFactory(), BatchFactory()
    small_peak, small_growth, _ = _import_in_fresh_process(small, small_batch.pk)
    large_peak, large_growth, seconds = _import_in_fresh_process(large, large_batch.pk)
    measured = (
        f"peak RSS: 10k lines {small_peak / 1024:.1f} MiB (import +{small_growth / 1024:.1f}), "
        f"100k lines {large_peak / 1024:.1f} MiB (+{large_growth / 1024:.1f}); 100k import took {seconds:.1f} s"
    )
    logger.info(measured)  # shown with --log-cli-level=INFO

    assert Prompt.objects.filter(batch=small_batch).count() == 10_000
    assert Prompt.objects.filter(batch=large_batch).count() == 100_000
    assert large_peak <= 1.25 * small_peak, measured
    assert large_growth <= 1.25 * small_growth + 2048, measured  # KiB; 2 MiB for allocator noise, a tenth of the file
