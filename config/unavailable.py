"""A database that is down for a moment (a restart, a failover) is a 503 with ``Retry-After``, never a 500:
the API answers in its error shape (``{"error": {"status", "code", "detail", "fields"}}``, code
``database_unavailable``), pages with a short plain page that says to retry. Transactions that were open roll
back with the connection, so nothing is half-written; clients retry (the API's submits with their idempotency
key) and carry on once the server reconnects (``conn_health_checks``).

``DatabaseUnavailableMiddleware`` answers for errors raised in views (the API authenticates there too);
``server_error`` is the ``handler500`` for errors raised anywhere else (a middleware reading the session).
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import server_error as django_server_error

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DETAIL = "The database is unavailable for a moment; retry shortly."
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Ladder: back in a moment</title>
<meta http-equiv="refresh" content="{seconds}"></head><body style="font-family: sans-serif; margin: 3rem">
<h1>Back in a moment</h1><p>The database is unavailable for a moment. This page retries by itself in {seconds}
seconds; nothing you saved is lost.</p></body></html>"""


def _is_database_down(exc: BaseException | None) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError))


def unavailable_response(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"error": {"status": 503, "code": "database_unavailable",
                                                         "detail": DETAIL, "fields": {}}}, status=503)
    else:
        response = HttpResponse(PAGE.format(seconds=RETRY_AFTER_SECONDS), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if _is_database_down(exception):
            logger.warning("database unavailable: %s %s: %s", request.method, request.path, exception)
            return unavailable_response(request)
        return None


def server_error(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """``handler500``: a 503 when the database is what failed, else Django's 500 page."""
    if _is_database_down(sys.exc_info()[1]):
        return unavailable_response(request)
    return django_server_error(request, *args, **kwargs)
