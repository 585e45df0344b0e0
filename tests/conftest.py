"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis; factories live in
``tests/factories.py``."""

import pytest
import redis
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """Start from an empty broker database so no message of an earlier run reaches a test's worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
