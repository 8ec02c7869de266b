"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, with the statuses the
official client maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422 UnprocessableEntityError, 429
RateLimitError). The product's own handler decides status and message (one mechanism); this only
reshapes its body."""

from __future__ import annotations

from tenants.apis import TenantApi
from tenants.errors import DomainError, api_exception_handler

TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error", 429: "rate_limit_error"}
CODES = {401: "invalid_api_key", 403: "insufficient_permissions", 404: "not_found", 429: "rate_limit_exceeded"}


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": CODES.get(status) or code}}


def openai_exception_handler(exc, context):
    response = api_exception_handler(exc, context)
    if response is None or not isinstance(response.data, dict) or "error" not in response.data:
        return response
    ours = response.data["error"]
    message, field, code = ours.get("message", ""), ours.get("field"), ours.get("code")
    response.data = openai_error_body(response.status_code, message, field, code)
    return response


class OpenAIApi(TenantApi):
    """Base of the /v1 operations: the tenant API (key, scopes, tenant scope, rate limit) with
    OpenAI's error shape."""

    def get_exception_handler(self):
        return openai_exception_handler


def openai_fail(field: str, message: str):
    raise DomainError(message, field=field)


def openai_object(body, fields: tuple[str, ...]) -> dict:
    """A /v1 request body: a JSON object of ``fields`` only (OpenAI's wording for the others)."""
    if not isinstance(body, dict):
        raise DomainError("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        openai_fail(unknown[0], f"Unrecognized request argument supplied: {unknown[0]}")
    return body
