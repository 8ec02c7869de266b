"""One domain error type, mapped once to JSON: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response


class DomainError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class NotFound(DomainError, Http404):
    """404 in the API (JSON) and in dashboard pages alike."""

    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class PermissionDenied(DomainError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class Conflict(DomainError):
    """The request is valid but the object's state does not allow it now (409)."""

    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class UploadRejected(DomainError):
    code = "upload_rejected"


class UploadTooLarge(UploadRejected):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class Throttled(DomainError):
    """A key over its plan's per-minute limit (429 with ``Retry-After``)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "throttled"

    def __init__(self, retry_after: int):
        super().__init__(f"Too many requests for this API key; retry in {retry_after} s.")
        self.retry_after = retry_after


def error_body(code: str, message: str, field: str | None = None, **extra) -> dict:
    return {"error": {"code": code, "message": message, "field": field, **extra}}


def _first_validation_error(detail, prefix: str = "") -> tuple[str | None, str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else None
            field, message = _first_validation_error(value, f"{prefix}{name}." if name else prefix)
            return (field or (prefix + name if name else None)), message
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix.rstrip(".") or None), str(detail)


def api_exception_handler(exc, context):
    from rest_framework.views import exception_handler  # imported late: DRF's views import our auth

    if isinstance(exc, DomainError):
        response = Response(error_body(exc.code, exc.message, exc.field), status=exc.status_code)
        if isinstance(exc, Throttled):
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_validation_error(exc.detail)
        text = f"{field}: {message}" if field else message
        return Response(error_body("invalid", text, field, details=exc.detail), status=400)
    response = exception_handler(exc, context)
    if response is not None:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        code = getattr(detail, "code", None) or "error"
        response.data = error_body(str(code), str(detail))
    return response
