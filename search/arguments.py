"""The one parser of a search request body (``POST /api/search``), whichever path answers it.

The DRF view and the fast path (``search/fastpath.py``) both call ``search_arguments_parse``, and
the other entry points (hybrid GET, the dashboard playground) turn their own wire format into the
same body and parse it here: a new search parameter is written here once, its limits in
``search/limits.py``. It accepts exactly what ``SearchRequestSerializer``
documents in the OpenAPI schema (the serializer is the schema; running it costs ~0.3 ms, a tenth
of a cached answer, so validation is plain Python) and refuses anything else with a
``DomainError`` naming the field, which the API renders as a 400. The fast path hands a refused
request to the full path, which answers the same error.

As the serializer pieces in ``tenants/serializers.py`` do: unknown fields are refused; NUL
characters are removed from text; JSON's own types only (``"5"`` is not a number, ``true`` not
1), an integral float counts as an integer; ``null`` is "not given" where the schema allows it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from knowledge.models import Document
from search import limits
from search.filters import SearchFilters, search_filters_build
from search.limits import ID_MAX, LIST_MAX_ITEMS, METADATA_MAX_BYTES, MODES, ROLES
from search.selectors import NO_FILTERS
from tenants import inputs
from tenants.errors import DomainError

FIELDS = (
    "query",
    "chatbot_id",
    "max_results",
    "similarity_threshold",
    "mode",
    "semantic_weight",
    "filters",
    "content_types",
    "categories",
    "document_ids",
    "metadata",
    "conversation",
    "user_id",
    "conversation_id",
)
FILTER_KEYS = ("content_types", "categories", "document_ids", "metadata")


@dataclass
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class SearchArguments:
    query: str
    chatbot_id: int
    max_results: int = limits.DEFAULT_MAX_RESULTS
    threshold: float = limits.DEFAULT_THRESHOLD
    mode: str = limits.DEFAULT_MODE
    weight: float | None = None
    filters: SearchFilters = NO_FILTERS
    conversation: tuple[Turn, ...] = ()
    end_user: str | None = None
    conversation_id: str | None = None


def _fail(field: str, message: str):
    raise DomainError(f"{field}: {message}", field=field)


def _text(value, field: str, *, max_length: int, trim: bool = True, blank: bool = False) -> str:
    if not isinstance(value, str):
        _fail(field, "must be text (a JSON string).")
    value = value.replace("\x00", "")
    if trim:
        value = value.strip()
    if not value and not blank:
        _fail(field, "This field may not be blank.")
    if len(value) > max_length:
        _fail(field, f"Ensure this field has no more than {max_length} characters.")
    return value


def _integer(value, field: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, "A valid integer is required.")
    if not low <= value <= high:
        _fail(field, f"must be a whole number from {low} to {high}.")
    return value


def _number(value, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(field, "A valid number is required.")
    if not low <= value <= high:
        _fail(field, f"must be a number from {low:g} to {high:g}.")
    return float(value)


def _list(value, field: str, key: str) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list):
        _fail(field, f'Expected a list of items but got type "{type(value).__name__}".')
    if len(value) > LIST_MAX_ITEMS[key]:
        _fail(field, f"Ensure this field has no more than {LIST_MAX_ITEMS[key]} elements.")
    if key == "content_types":
        for item in value:
            if not isinstance(item, str) or item not in Document.ContentType.values:
                _fail(field, f'"{str(item)[:40]}" is not a valid choice ({", ".join(Document.ContentType.values)}).')
        return value
    if key == "categories":
        return [_text(item, field, max_length=limits.CATEGORY_MAX_CHARS) for item in value]
    return [_integer(item, field, 1, ID_MAX) for item in value]


def _metadata(value, field: str) -> dict | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            value = inputs.json_loads(value, field=field, clean=True) if value.strip() else {}
        value = inputs.json_clean(value, field=field)
    except DomainError as exc:
        _fail(field, exc.message.removeprefix(f"{field} "))
    if not isinstance(value, dict):
        _fail(field, "must be a JSON object.")
    if len(json.dumps(value)) > METADATA_MAX_BYTES:
        _fail(field, f"must be at most {METADATA_MAX_BYTES // 1000} kB of JSON.")
    if not value:
        _fail(field, "must name at least one condition (or be left out, or null).")
    return value


def _filters(value, prefix: str) -> dict:
    found = {}
    for key in FILTER_KEYS:
        field = f"{prefix}{key}"
        item = value.get(key)
        found[key] = _metadata(item, field) if key == "metadata" else _list(item, field, key)
    return found


def _conversation(value) -> tuple[Turn, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        _fail("conversation", f'Expected a list of items but got type "{type(value).__name__}".')
    if len(value) > limits.CONVERSATION_MAX_TURNS:
        _fail("conversation", f"Ensure this field has no more than {limits.CONVERSATION_MAX_TURNS} elements.")
    turns = []
    for position, turn in enumerate(value):
        field = f"conversation.{position}"
        if not isinstance(turn, dict):
            _fail(field, "Invalid data. Expected a dictionary.")
        unknown = sorted(set(turn) - {"role", "content"})
        if unknown:
            _fail(f"{field}.{unknown[0]}", "Unknown field; this operation takes role, content.")
        for name in ("role", "content"):
            if name not in turn:
                _fail(f"{field}.{name}", "This field is required.")
        if not isinstance(turn["role"], str) or turn["role"] not in ROLES:
            _fail(f"{field}.role", f"must be one of {', '.join(ROLES)}.")
        content = _text(turn["content"], f"{field}.content", max_length=limits.TURN_MAX_CHARS, trim=False, blank=True)
        turns.append(Turn(role=turn["role"], content=content))
    return tuple(turns)


def search_arguments_parse(body) -> SearchArguments:
    """A search request's arguments, or ``DomainError`` naming the first bad field."""
    if not isinstance(body, dict):
        raise DomainError("The request body must be a JSON object.")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        _fail(unknown[0], f"Unknown field; this operation takes {', '.join(FIELDS)}.")
    for name in ("query", "chatbot_id"):
        if body.get(name) is None:
            _fail(name, "This field is required." if name not in body else "This field may not be null.")
    query = _text(body["query"], "query", max_length=limits.QUERY_MAX_CHARS)
    chatbot_id = _integer(body["chatbot_id"], "chatbot_id", 1, ID_MAX)
    max_results = _integer(body.get("max_results", limits.DEFAULT_MAX_RESULTS), "max_results", *limits.MAX_RESULTS)
    threshold = _number(
        body.get("similarity_threshold", limits.DEFAULT_THRESHOLD), "similarity_threshold", *limits.THRESHOLD
    )
    mode = body.get("mode", limits.DEFAULT_MODE)
    if not isinstance(mode, str) or mode not in MODES:
        _fail("mode", f"must be one of {', '.join(MODES)}.")
    weight = body.get("semantic_weight")
    weight = None if weight is None else _number(weight, "semantic_weight", *limits.SEMANTIC_WEIGHT)
    nested = body.get("filters")
    if nested is not None and not isinstance(nested, dict):
        _fail("filters", "Invalid data. Expected a dictionary.")
    nested = nested or {}
    unknown = sorted(set(nested) - set(FILTER_KEYS))
    if unknown:
        _fail(f"filters.{unknown[0]}", f"Unknown field; this operation takes {', '.join(FILTER_KEYS)}.")
    given, inner = _filters(body, ""), _filters(nested, "filters.")
    filters = search_filters_build(**{key: given[key] or inner[key] for key in FILTER_KEYS})
    return SearchArguments(
        query=query,
        chatbot_id=chatbot_id,
        max_results=max_results,
        threshold=threshold,
        mode=mode,
        weight=weight,
        filters=filters,
        conversation=_conversation(body.get("conversation")),
        end_user=_optional_text(body.get("user_id"), "user_id"),
        conversation_id=_optional_text(body.get("conversation_id"), "conversation_id"),
    )


def _optional_text(value, field: str) -> str | None:
    return None if value is None else _text(value, field, max_length=limits.CALLER_ID_MAX_CHARS)
