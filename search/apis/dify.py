"""Dify's External Knowledge API: ``POST /api/dify/retrieval``, a thin adapter over the one search
pipeline. Register ``http://<host>/api/dify`` as the endpoint in Dify (it appends
``/retrieval``) with one of the tenant's API keys (scope ``search``); a knowledge base's
"External Knowledge ID" is a chatbot id.

Dify's body (``api/services/external_knowledge_service.py``: ``knowledge_id``, ``query``,
``retrieval_setting{top_k, score_threshold}``, optional ``metadata_condition``) becomes the body
of ``POST /api/search`` — parsed by ``search_arguments_parse``, answered by ``search_answer``
(access, rate limit, cache, run, log) — and the ``SearchResult`` is rendered as Dify's
``{"records": [...]}``. Errors are Dify's ``{"error_code", "error_msg"}``: 1001 a malformed
``Authorization`` header and 1002 a key that is not accepted (both 403), 2001 a knowledge base
that does not exist for this key (404, another tenant's chatbot too), and for what Dify's
documentation leaves open: 400 (error_code 400) a body that is not a valid request — which is what
Dify's "check" of a new endpoint (a POST with the key and no body) must get — and 429 with
``Retry-After``.

``metadata_condition`` (Dify's operators over document and chunk metadata) is compiled into the
filter language (``search/filters.py``); never into SQL here.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.authentication import get_authorization_header
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from search import limits
from search.arguments import search_arguments_parse
from search.presenters import unit_score
from search.services import search_answer
from tenants.authentication import ApiKeyAuthentication
from tenants.errors import DomainError, NotFound, PermissionDenied, Throttled

MAX_CONDITIONS = 50
FIELDS = ("knowledge_id", "query", "retrieval_setting", "metadata_condition")


class DifyError(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> DifyError:
    return DifyError(400, 400, message)


def _knowledge_id(value) -> int:
    """A chatbot id, as Dify sends it (a string) or as a number; anything else names nothing."""
    if isinstance(value, bool):
        raise DifyError(404, 2001, "The knowledge does not exist.")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 18 and int(value) > 0:
        return int(value)
    raise DifyError(404, 2001, "The knowledge does not exist.")


NUMERIC = re.compile(r"\s*-?[0-9]+(\.[0-9]+)?\s*")


def _number(value, name: str) -> float:
    """A number, or a numeric string (Dify sends what was typed): digits, an optional sign and
    decimals, as ``REQUEST_SCHEMA`` states."""
    if isinstance(value, str):
        if not NUMERIC.fullmatch(value):
            raise _bad(f"{name} compares with a number; got {value!r}.")
        value = float(value)
        value = int(value) if value.is_integer() else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{name} compares with a number; got {value!r}.")
    return value


def _name(condition: dict) -> str:
    name = condition.get("name")
    if isinstance(name, list) and len(name) == 1:
        name = name[0]
    if not isinstance(name, str) or not name:
        raise _bad("metadata_condition.conditions[].name must be a metadata name (a string or a one-item list).")
    return name


def _values(value) -> list:
    if (
        isinstance(value, list)
        and value
        and all((isinstance(v, str) and v) or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
    ):
        return value
    if isinstance(value, str) and value.strip():
        return [part.strip() for part in value.split(",") if part.strip()]
    raise _bad("'in' and 'not in' take a list of values (or one comma-separated string).")


def _moment(value, name: str, op: str) -> dict:
    """before / after: a Unix timestamp (what Dify's time fields hold) or a date string; metadata
    may hold either, so a timestamp is also compared as an ISO date string."""
    if isinstance(value, str) and value.strip() and not NUMERIC.fullmatch(value):
        if len(value) > 1000:
            raise _bad(f"{name}: a date of at most 1000 characters.")
        return {"field": name, "op": op, "value": value.strip()}
    stamp = _number(value, name)
    try:
        iso = datetime.fromtimestamp(stamp, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        raise _bad(f"{name}: {value!r} is not a time.") from None
    return {"or": [{"field": name, "op": op, "value": stamp}, {"field": name, "op": op, "value": iso}]}


def _condition(condition) -> dict:
    """One of Dify's conditions as a node of the filter language."""
    if not isinstance(condition, dict):
        raise _bad("metadata_condition.conditions must be a list of objects.")
    extra = sorted(set(condition) - {"name", "comparison_operator", "value"})
    if extra:
        raise _bad(f"Unknown key {extra[0]!r} in a condition: it takes name, comparison_operator and value.")
    name, op, value = _name(condition), condition.get("comparison_operator"), condition.get("value")
    if op not in ("empty", "not empty") and "value" not in condition:
        raise _bad(f"{op!r} on {name!r} needs a value.")
    node = {"field": name}
    if op in ("contains", "not contains", "start with", "end with"):
        if not isinstance(value, str) or not value:
            raise _bad(f"{op!r} on {name!r} takes a non-empty string.")
        mapped = {"contains": "contains", "not contains": "not_contains", "start with": "starts_with"}
        return {**node, "op": mapped.get(op, "ends_with"), "value": value}
    if op in ("is", "is not"):
        if isinstance(value, (dict, list)):
            raise _bad(f"{op!r} on {name!r} takes one value.")
        return {**node, "op": "eq" if op == "is" else "ne", "value": value}
    if op in ("in", "not in"):
        return {**node, "op": "in" if op == "in" else "nin", "value": _values(value)}
    if op in ("empty", "not empty"):
        return {**node, "op": "exists", "value": op == "not empty"}
    if op in ("=", "≠"):
        # numbers: equal is neither below nor above (a number stored as text compares as one)
        number = _number(value, name)
        if op == "=":
            return {"and": [{**node, "op": "gte", "value": number}, {**node, "op": "lte", "value": number}]}
        return {"or": [{**node, "op": "lt", "value": number}, {**node, "op": "gt", "value": number}]}
    if op in (">", "<", "≥", "≤"):
        return {**node, "op": {">": "gt", "<": "lt", "≥": "gte", "≤": "lte"}[op], "value": _number(value, name)}
    if op in ("before", "after"):
        return _moment(value, name, "lt" if op == "before" else "gt")
    raise _bad(
        f"unknown comparison_operator {op!r}: use contains, not contains, start with, end with, is, is not, "
        "in, not in, empty, not empty, =, ≠, >, <, ≥, ≤, before or after."
    )


def metadata_filter(condition) -> dict | None:
    """Dify's ``metadata_condition`` as a metadata filter (None: no condition)."""
    if condition is None:
        return None
    if not isinstance(condition, dict):
        raise _bad("metadata_condition must be an object.")
    extra = sorted(set(condition) - {"logical_operator", "conditions"})
    if extra:
        raise _bad(f"Unknown key {extra[0]!r} in metadata_condition: it takes logical_operator and conditions.")
    operator = condition.get("logical_operator")
    if operator not in ("and", "or", None):
        raise _bad("metadata_condition.logical_operator must be 'and' or 'or'.")
    operator = operator or "and"
    conditions = condition.get("conditions")
    conditions = [] if conditions is None else conditions
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
        raise _bad(f"metadata_condition.conditions must be a list of at most {MAX_CONDITIONS} conditions.")
    nodes = [_condition(c) for c in conditions]
    if not nodes:
        return None
    # the filter language groups at most 10 per level: nest longer lists
    while len(nodes) > 10:
        groups = [nodes[i : i + 10] for i in range(0, len(nodes), 10)]
        nodes = [{operator: group} if len(group) > 1 else group[0] for group in groups]
    return nodes[0] if len(nodes) == 1 else {operator: nodes}


def dify_search_body(body) -> dict:
    """Dify's request as the body of ``POST /api/search`` (then parsed by its one parser)."""
    if not isinstance(body, dict) or not body:
        raise _bad("Send a JSON object with knowledge_id, query and retrieval_setting.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad(f"Unknown field {unknown[0]!r}; this operation takes {', '.join(FIELDS)}.")
    if body.get("knowledge_id") in (None, ""):
        raise _bad("knowledge_id is required.")
    chatbot_id = _knowledge_id(body["knowledge_id"])
    setting = body.get("retrieval_setting") or {}
    if not isinstance(setting, dict):
        raise _bad("retrieval_setting must be an object with top_k and score_threshold.")
    top_k = setting.get("top_k")
    top_k = limits.DEFAULT_MAX_RESULTS if top_k is None else top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limits.MAX_RESULTS[1]:
        raise _bad(f"retrieval_setting.top_k must be an integer from 1 to {limits.MAX_RESULTS[1]}.")
    threshold = setting.get("score_threshold")
    threshold = 0.0 if threshold is None else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise _bad("retrieval_setting.score_threshold must be a number from 0 to 1.")
    search = {"query": body.get("query"), "chatbot_id": chatbot_id, "max_results": top_k,
              "similarity_threshold": float(threshold)}  # fmt: skip
    metadata = metadata_filter(body.get("metadata_condition"))
    if metadata is not None:
        search["filters"] = {"metadata": metadata}
    return search


def records(result) -> list[dict]:
    out = []
    for hit in result.results:
        metadata = {**(hit.metadata or {}), "document_id": hit.document_id, "chunk_id": hit.chunk_id}
        if hit.page is not None:
            metadata["page"] = hit.page
        if hit.heading:
            metadata["heading"] = hit.heading
        out.append({"content": hit.content, "score": unit_score(hit), "title": hit.title or "", "metadata": metadata})
    return out


def _error(exc: DifyError, retry_after: int | None = None) -> Response:
    response = Response({"error_code": exc.code, "error_msg": exc.message}, status=exc.status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


_TEXT = {"type": "string", "minLength": 1, "maxLength": 1000}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_NUMBER_TEXT = {"type": "string", "pattern": "^\\s*-?[0-9]+(\\.[0-9]+)?\\s*$"}


def _condition_schema(operators: list, value: dict | None) -> dict:
    properties = {
        "name": {"anyOf": [_NAME, {"type": "array", "minItems": 1, "maxItems": 1, "items": _NAME}]},
        "comparison_operator": {"enum": operators},
    }
    properties["value"] = value if value is not None else {}
    return {"type": "object", "required": ["name", "comparison_operator", *(["value"] if value else [])],
            "properties": properties, "additionalProperties": False}  # fmt: skip


# Dify's body as the server accepts it (the contract schemathesis checks): one branch per kind of
# comparison, since what a value may be depends on its operator.
REQUEST_SCHEMA = {
    "type": "object",
    "required": ["knowledge_id", "query"],
    "additionalProperties": False,
    "properties": {
        "knowledge_id": {
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}],
            "description": "A chatbot id.",
        },  # fmt: skip
        "query": {"type": "string", "minLength": 1, "maxLength": limits.QUERY_MAX_CHARS, "pattern": "\\S"},
        "retrieval_setting": {
            "type": "object",
            "properties": {
                "top_k": {
                    "anyOf": [{"type": "integer", "minimum": 1, "maximum": limits.MAX_RESULTS[1]}, {"type": "null"}]
                },  # fmt: skip
                "score_threshold": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
            },
        },
        "metadata_condition": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "logical_operator": {"enum": ["and", "or", None]},
                        "conditions": {
                            "anyOf": [
                                {"type": "null"},
                                {
                                    "type": "array",
                                    "maxItems": MAX_CONDITIONS,
                                    "items": {
                                        "oneOf": [
                                            _condition_schema(
                                                ["contains", "not contains", "start with", "end with"], _TEXT
                                            ),  # fmt: skip
                                            _condition_schema(
                                                ["is", "is not"],
                                                {
                                                    "anyOf": [
                                                        {"type": "string", "maxLength": 1000},
                                                        {"type": "number"},
                                                        {"type": "boolean"},
                                                        {"type": "null"},
                                                    ]
                                                },
                                            ),  # fmt: skip
                                            _condition_schema(
                                                ["in", "not in"],
                                                {
                                                    "anyOf": [
                                                        {
                                                            "type": "array",
                                                            "minItems": 1,
                                                            "maxItems": 500,
                                                            "items": {"anyOf": [_TEXT, {"type": "number"}]},
                                                        },
                                                        {"type": "string", "maxLength": 1000, "pattern": "[^,\\s]"},
                                                    ]
                                                },
                                            ),
                                            _condition_schema(["empty", "not empty"], None),
                                            _condition_schema(
                                                ["=", "≠", ">", "<", "≥", "≤"],
                                                {"anyOf": [{"type": "number"}, _NUMBER_TEXT]},
                                            ),
                                            _condition_schema(
                                                ["before", "after"],
                                                {
                                                    "anyOf": [
                                                        {
                                                            "type": "number",
                                                            "minimum": -62135596800,
                                                            "maximum": 253402300799,
                                                        },  # years 1 to 9999
                                                        {**_NUMBER_TEXT, "maxLength": 30},
                                                        {**_TEXT, "pattern": "[^\\s0-9.-]"},
                                                    ]
                                                },
                                            ),
                                        ]  # fmt: skip
                                    },
                                },
                            ]
                        },
                    },
                },
            ]
        },
    },
}


_DIFY_ERROR = inline_serializer(
    "DifyError", {"error_code": serializers.IntegerField(), "error_msg": serializers.CharField()}
)


class DifyRetrievalApi(APIView):
    """``POST /api/dify/retrieval``: the key is read here (Dify's error codes, not DRF's 401)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []  # the pipeline counts the key's rate limit itself

    parser_classes = [JSONParser]  # the body is read here; this states its media type

    @extend_schema(
        operation_id="dify_retrieval",
        description="Dify's External Knowledge API. `Authorization: Bearer <key>` is required; Dify's own error "
        "codes answer a missing or malformed header (1001) and a refused key (1002) with 403, not 401.",
        request={"application/json": REQUEST_SCHEMA},
        responses={
            200: inline_serializer(
                "DifyRetrievalResponse",
                {
                    "records": inline_serializer(
                        "DifyRecord",
                        {
                            "content": serializers.CharField(),
                            "score": serializers.FloatField(),
                            "title": serializers.CharField(),
                            "metadata": serializers.DictField(),
                        },  # fmt: skip
                        many=True,
                    )
                },
            ),
            400: OpenApiResponse(_DIFY_ERROR),
            403: OpenApiResponse(_DIFY_ERROR),
            404: OpenApiResponse(_DIFY_ERROR),
            429: OpenApiResponse(_DIFY_ERROR),
        },
        tags=["dify"],
        auth=[],
    )
    def post(self, request):
        try:
            return Response({"records": records(self._search(request))})
        except DifyError as exc:
            return _error(exc)
        except Throttled as exc:
            return _error(DifyError(429, 429, exc.message), exc.retry_after)
        except NotFound:
            return _error(DifyError(404, 2001, "The knowledge does not exist."))
        except PermissionDenied as exc:
            return _error(DifyError(403, 1002, f"Authorization failed: {exc.message}"))
        except DomainError as exc:
            field = f"{exc.field}: " if exc.field else ""
            return _error(_bad(f"{field}{exc.message}"))

    def _search(self, request):
        parts = get_authorization_header(request).decode("latin-1").split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise DifyError(403, 1001, "Invalid Authorization header format. Expected 'Bearer <api-key>' format.")
        try:
            user, _ = ApiKeyAuthentication().authenticate(request)
        except exceptions.AuthenticationFailed as exc:
            raise DifyError(403, 1002, f"Authorization failed: {exc.detail}") from None
        try:
            body = json.loads(request.body or b"null")
        except (ValueError, RecursionError):
            raise _bad("The request body is not JSON.") from None
        args = search_arguments_parse(dify_search_body(body))
        return search_answer(principal=user.principal, args=args)
