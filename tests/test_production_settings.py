"""Production settings and the typed environment readers behind them.

The settings tests start ``manage.py`` in a subprocess with ``config.settings.production``, because settings
are read once per process and the suite itself runs on ``config.settings.test``. They use the PostgreSQL and
Redis of the suite (``DATABASE_URL`` / ``REDIS_URL``); ``check`` connects to neither.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_float_list, env_int, env_secret

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / ".env.example"
NO_ISSUES = "System check identified no issues (0 silenced)."
# Variables the settings read from the process environment; the caller's own values must not leak in.
_SETTINGS_PREFIXES = ("DJANGO_", "LADDER_", "CELERY_", "DATABASE_", "REDIS_")


def production_env(**overrides: str | None) -> dict[str, str]:
    """A realistic production environment: a random 50+ character key, one host, the suite's servers."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(_SETTINGS_PREFIXES)}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="ladder.example.org",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://ladder.example.org",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


# --- manage.py check under production settings --------------------------------------------------------------


def test_check_deploy_is_clean():
    assert len(production_env()["DJANGO_SECRET_KEY"]) >= 50
    result = manage(production_env(), "check", "--deploy", "--fail-level", "WARNING")
    output = _output(result)
    assert result.returncode == 0, output
    assert NO_ISSUES in output
    assert "WARNING" not in output
    assert "security.W" not in output


def test_refuses_to_start_without_secret_key():
    result = manage(production_env(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=None), "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_empty_secret_key_counts_as_missing():
    """``.env.example`` ships ``DJANGO_SECRET_KEY=`` empty, which must stop the process rather than run."""
    result = manage(production_env(DJANGO_SECRET_KEY=""), "check")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_secret_key_from_file(tmp_path):
    key_file = tmp_path / "django_secret_key"
    key_file.write_text(secrets.token_urlsafe(50) + "\n")
    env = production_env(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=str(key_file))
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, _output(result)
    assert NO_ISSUES in _output(result)


def test_non_postgresql_database_is_refused():
    result = manage(production_env(DATABASE_URL="sqlite:///x.db"), "check")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "PostgreSQL" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LADDER_LEASE_MINUTES", "ten", "LADDER_LEASE_MINUTES='ten' is not an integer."),
        ("DJANGO_SECURE_SSL_REDIRECT", "maybe", "DJANGO_SECURE_SSL_REDIRECT='maybe' is not a boolean"),
        ("LADDER_DEFAULT_OVERLAP", "0", "LADDER_DEFAULT_OVERLAP=0 is below its minimum of 1."),
    ],
)
def test_malformed_setting_stops_start_up(name, value, message):
    result = manage(production_env(**{name: value}), "check")
    assert result.returncode != 0
    assert message in result.stderr


def test_production_refuses_to_start_with_the_stand_in_sampler():
    result = manage(production_env(LADDER_DEMO_SAMPLER="models_core.sampling.DeterministicDemoSampler"), "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "LADDER_DEMO_SAMPLER='models_core.sampling.DeterministicDemoSampler'" in result.stderr
    assert "not production" in result.stderr


# --- .env.example ----------------------------------------------------------------------------------------------

_ENV_CALL = re.compile(r'\benv_\w+\(\s*"([A-Z][A-Z0-9_]*)"')
_SECRET_CALL = re.compile(r'\benv_secret\(\s*"([A-Z][A-Z0-9_]*)"')
_EXAMPLE_LINE = re.compile(r"^(#\s?)?([A-Z][A-Z0-9_]*)=(.*)$")


def _variables_read_by_settings() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "config").rglob("*.py"):
        text = path.read_text()
        names |= set(_ENV_CALL.findall(text))
        names |= {f"{name}_FILE" for name in _SECRET_CALL.findall(text)}
    return names


def _example_values() -> dict[str, str]:
    """Every ``NAME=value`` of .env.example, the commented-out defaults included."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _EXAMPLE_LINE.match(line)
        if match:
            values[match.group(2)] = match.group(3)
    return values


def test_env_example_documents_every_variable_the_settings_read():
    read = _variables_read_by_settings()
    assert {"DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY_FILE", "DATABASE_URL", "LADDER_LEASE_MINUTES"} <= read
    missing = read - set(_example_values())
    assert not missing, f".env.example does not document {sorted(missing)}"


def test_env_example_values_pass_check_deploy():
    """The documented values and defaults parse, and with a real key they give a clean deploy check."""
    example = {name: value for name, value in _example_values().items() if not name.endswith("_FILE")}
    assert example["DJANGO_SECRET_KEY"] == ""  # refuses to start until set (see above)
    env = production_env()
    env.update(example)
    env.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
    )
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, _output(result)
    assert NO_ISSUES in _output(result)


# --- config.env readers ----------------------------------------------------------------------------------------


def test_env_int_rejects_a_non_integer(monkeypatch):
    monkeypatch.setenv("LADDER_LEASE_MINUTES", "ten")
    with pytest.raises(ImproperlyConfigured, match="LADDER_LEASE_MINUTES"):
        env_int("LADDER_LEASE_MINUTES", 10, minimum=1)


def test_env_int_rejects_a_value_below_its_minimum(monkeypatch):
    monkeypatch.setenv("LADDER_LEASE_MINUTES", "0")
    with pytest.raises(ImproperlyConfigured, match=r"LADDER_LEASE_MINUTES=0 is below its minimum of 1"):
        env_int("LADDER_LEASE_MINUTES", 10, minimum=1)


def test_env_int_rejects_a_value_above_its_maximum(monkeypatch):
    monkeypatch.setenv("LADDER_TEST_INT", "11")
    with pytest.raises(ImproperlyConfigured, match=r"LADDER_TEST_INT=11 is above its maximum of 10"):
        env_int("LADDER_TEST_INT", 1, maximum=10)


def test_env_int_reads_a_value_and_falls_back_to_its_default(monkeypatch):
    monkeypatch.setenv("LADDER_LEASE_MINUTES", " 15 ")
    assert env_int("LADDER_LEASE_MINUTES", 10, minimum=1) == 15
    monkeypatch.setenv("LADDER_LEASE_MINUTES", "")
    assert env_int("LADDER_LEASE_MINUTES", 10, minimum=1) == 10
    monkeypatch.delenv("LADDER_LEASE_MINUTES")
    assert env_int("LADDER_LEASE_MINUTES", 10, minimum=1) == 10


def test_env_bool_rejects_a_non_boolean(monkeypatch):
    monkeypatch.setenv("DJANGO_SECURE_SSL_REDIRECT", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECURE_SSL_REDIRECT"):
        env_bool("DJANGO_SECURE_SSL_REDIRECT", True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("no", False),
     ("off", False), ("", False)],
)
def test_env_bool_reads_the_documented_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("DJANGO_SECURE_SSL_REDIRECT", value)
    assert env_bool("DJANGO_SECURE_SSL_REDIRECT", not expected) is expected


def test_env_float_and_float_list_reject_non_numbers(monkeypatch):
    monkeypatch.setenv("LADDER_TEST_FLOAT", "warm")
    with pytest.raises(ImproperlyConfigured, match="LADDER_TEST_FLOAT"):
        env_float("LADDER_TEST_FLOAT", 1.0)
    monkeypatch.setenv("LADDER_DEFAULT_TEMPERATURES", "0.7,hot")
    with pytest.raises(ImproperlyConfigured, match="LADDER_DEFAULT_TEMPERATURES"):
        env_float_list("LADDER_DEFAULT_TEMPERATURES", [0.7, 1.0])
    monkeypatch.setenv("LADDER_DEFAULT_TEMPERATURES", " 0.6, 0.9 ")
    assert env_float_list("LADDER_DEFAULT_TEMPERATURES", [0.7, 1.0]) == [0.6, 0.9]


def test_env_secret_reads_the_file_named_by_name_file(monkeypatch, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("  from-the-file\n")
    monkeypatch.setenv("LADDER_TEST_SECRET", "from-the-variable")
    monkeypatch.setenv("LADDER_TEST_SECRET_FILE", str(secret_file))
    assert env_secret("LADDER_TEST_SECRET") == "from-the-file"  # the file wins, whitespace stripped


def test_env_secret_without_a_file_reads_the_variable_or_refuses(monkeypatch):
    monkeypatch.delenv("LADDER_TEST_SECRET_FILE", raising=False)
    monkeypatch.setenv("LADDER_TEST_SECRET", "from-the-variable")
    assert env_secret("LADDER_TEST_SECRET") == "from-the-variable"
    monkeypatch.delenv("LADDER_TEST_SECRET")
    with pytest.raises(ImproperlyConfigured, match="LADDER_TEST_SECRET"):
        env_secret("LADDER_TEST_SECRET")
    assert env_secret("LADDER_TEST_SECRET", "fallback") == "fallback"


def test_env_secret_file_that_does_not_exist_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_TEST_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="LADDER_TEST_SECRET_FILE"):
        env_secret("LADDER_TEST_SECRET")
