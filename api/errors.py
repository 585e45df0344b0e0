"""One error shape for every endpoint: ``{"error": {"status", "code", "detail", "fields"}}``."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.services import LeaseExpired


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def _from_django(exc):
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return exceptions.ValidationError(detail)
    if isinstance(exc, LeaseExpired):
        return Conflict(str(exc), code="lease_expired")
    return exc


def exception_handler(exc, context):
    exc = _from_django(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    fields = {}
    if isinstance(data, dict) and "detail" not in data:
        fields = {k: [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in data.items()}
        detail = "; ".join(f"{k}: {' '.join(v)}" if k != "non_field_errors" else " ".join(v) for k, v in fields.items())
    elif isinstance(data, list):
        detail = " ".join(str(m) for m in data)
    else:
        detail = str(data.get("detail", ""))
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        if isinstance(codes, str):
            code = codes
    elif isinstance(exc, Http404):
        code = "not_found"
    elif isinstance(exc, DjangoPermissionDenied):
        code = "permission_denied"
    response.data = {"error": {"status": response.status_code, "code": code, "detail": detail, "fields": fields}}
    return response


def error_response(status_code: int, code: str, detail: str) -> Response:
    return Response({"error": {"status": status_code, "code": code, "detail": detail, "fields": {}}},
                    status=status_code)
