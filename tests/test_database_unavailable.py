"""A database that cannot be reached is a 503 with Retry-After (the API's error shape; a short page for the
browser), never a 500: from a view (the middleware) and from anywhere else (handler500)."""

import json

import psycopg
import pytest
from django.db import OperationalError
from django.test import RequestFactory

from config import unavailable


@pytest.fixture
def database_down_error():
    """A real connection failure: nothing listens on port 9."""
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:9/ladder", connect_timeout=2)
    except psycopg.OperationalError as exc:
        return OperationalError(str(exc))
    pytest.fail("something listens on port 9")


def test_the_api_answers_503_in_its_error_shape(database_down_error):
    middleware = unavailable.DatabaseUnavailableMiddleware(lambda r: None)
    response = middleware.process_exception(RequestFactory().post("/api/v1/tasks/1/comparison/"), database_down_error)
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert json.loads(response.content) == {"error": {"status": 503, "code": "database_unavailable",
                                                      "detail": unavailable.DETAIL, "fields": {}}}


def test_a_page_gets_a_short_page_that_retries_and_other_errors_stay_errors(database_down_error):
    middleware = unavailable.DatabaseUnavailableMiddleware(lambda r: None)
    page = middleware.process_exception(RequestFactory().get("/batches/1/"), database_down_error)
    assert page.status_code == 503 and b"Back in a moment" in page.content and b'http-equiv="refresh"' in page.content
    assert middleware.process_exception(RequestFactory().get("/batches/1/"), ValueError("bug")) is None


def test_handler500_turns_a_database_error_raised_outside_a_view_into_a_503(database_down_error):
    request = RequestFactory().get("/api/v1/health/")
    try:
        raise database_down_error
    except OperationalError:
        response = unavailable.server_error(request)
    assert response.status_code == 503
    try:
        raise ValueError("bug")
    except ValueError:
        assert unavailable.server_error(request).status_code == 500
