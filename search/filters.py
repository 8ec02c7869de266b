"""Search filters: validated once, compiled to one parameterised SQL condition.

A metadata filter is either a condition ``{"field": "product", "op": "eq", "value": "web"}`` or a
group ``{"and": [...]}`` / ``{"or": [...]}``; the shorthand ``{"product": "web", "year": {"gte": 2020}}``
means the same as an ``and`` of ``eq``/operator conditions. Metadata is the chunk's metadata
over its document's, so row-level FAQ columns win.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tenants import inputs
from tenants.errors import DomainError

TEXT_OPERATORS = ("contains", "not_contains", "starts_with", "ends_with")  # case-insensitive
OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", *TEXT_OPERATORS, "exists")
RESERVED = ("field", "op", "value", "and", "or")  # not metadata names in the shorthand
MAX_CONDITIONS = 500
MAX_DEPTH = 32
MAX_GROUP = 10  # filters in one and/or group, fields in one shorthand object
MAX_LIST = 500
MAX_NAME = 200
MAX_TEXT = 1000  # a string compared with


def _scalar(description: str) -> dict:
    return {
        "description": description,
        "anyOf": [
            {"type": "string", "maxLength": MAX_TEXT},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ],
    }


_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
_LIST = {"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": _scalar("a plain value")}
_ORDERED = {"anyOf": [{"type": "string", "maxLength": MAX_TEXT}, {"type": "number"}]}
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
_NODES = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_GROUP,
    "items": {"$ref": "#/components/schemas/MetadataFilter"},
}


def _condition_schema(ops: tuple[str, ...], value: dict, *, value_required: bool) -> dict:
    return {
        "type": "object",
        "properties": {"field": _NAME, "op": {"type": "string", "enum": list(ops)}, "value": value},
        "required": ["field", "op", *(["value"] if value_required else [])],
        "additionalProperties": False,
    }


# The filter language as the OpenAPI schema states it (components added by chatbot_training/openapi.py);
# _normalise accepts exactly this.
OPENAPI_COMPONENTS = {
    "MetadataFilter": {
        "description": 'A condition {"field", "op", "value"}, a group {"and": [...]} or {"or": [...]}, or the '
        'shorthand {"product": "web", "year": {"gte": 2020}} (fields joined by and). Operators: eq, ne, in, nin, '
        "gt, gte, lt, lte; contains, not_contains, starts_with, ends_with (text, case-insensitive; contains also "
        "finds an element of a list); exists (true: the field holds a value other than null or an empty string, "
        "false: it does not); chunk metadata wins over document metadata; numbers stored as text compare as numbers.",
        "anyOf": [
            _condition_schema(("eq", "ne"), _scalar("compared for equality"), value_required=False),
            _condition_schema(("in", "nin"), _LIST, value_required=True),
            _condition_schema(("gt", "gte", "lt", "lte"), _ORDERED, value_required=True),
            _condition_schema(TEXT_OPERATORS, _TEXT, value_required=True),
            _condition_schema(("exists",), {"type": "boolean"}, value_required=True),
            {"type": "object", "properties": {"and": _NODES}, "required": ["and"], "additionalProperties": False},
            {"type": "object", "properties": {"or": _NODES}, "required": ["or"], "additionalProperties": False},
            {"$ref": "#/components/schemas/MetadataShorthand"},
        ],
    },
    "MetadataShorthand": {
        "type": "object",
        "minProperties": 1,
        "maxProperties": MAX_GROUP,
        "propertyNames": {**_NAME, "not": {"enum": list(RESERVED)}},
        "additionalProperties": {
            "anyOf": [
                _scalar("equal to this"),
                {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {
                        **{op: _scalar(op) for op in ("eq", "ne")},
                        **{op: _LIST for op in ("in", "nin")},
                        **{op: _ORDERED for op in ("gt", "gte", "lt", "lte")},
                        **{op: _TEXT for op in TEXT_OPERATORS},
                        "exists": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            ]
        },
    },
}


@dataclass(frozen=True)
class SearchFilters:
    content_types: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    document_ids: tuple[int, ...] = ()
    metadata: dict | None = None
    conditions: int = field(default=0, compare=False)

    @property
    def empty(self) -> bool:
        return not (self.content_types or self.categories or self.document_ids or self.metadata)

    def as_dict(self) -> dict:
        out: dict = {}
        if self.content_types:
            out["content_types"] = list(self.content_types)
        if self.categories:
            out["categories"] = list(self.categories)
        if self.document_ids:
            out["document_ids"] = list(self.document_ids)
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def sql(self) -> tuple[str, list]:
        """``AND``-joined conditions over aliases ``c`` (chunk) and ``d`` (document)."""
        parts: list[str] = []
        params: list = []
        if self.content_types:
            parts.append("d.content_type = ANY(%s)")
            params.append(list(self.content_types))
        if self.categories:
            parts.append("d.category = ANY(%s)")
            params.append(list(self.categories))
        if self.document_ids:
            parts.append("c.document_id = ANY(%s)")
            params.append(list(self.document_ids))
        if self.metadata:
            parts.append(_compile(self.metadata, params))
        return (" AND ".join(parts) or "TRUE"), params


def _bad(message: str) -> DomainError:
    return DomainError(message, field="filters.metadata")


def _normalise(node, depth: int, counter: list[int]) -> dict:
    """Validate a metadata filter and rewrite it to the explicit form."""
    if depth > MAX_DEPTH:
        raise _bad(f"metadata filter is nested deeper than {MAX_DEPTH} levels.")
    if not isinstance(node, dict) or not node:
        raise _bad("each metadata filter must be a non-empty object.")
    if set(node) <= {"and", "or"} and len(node) == 1:
        ((kind, children),) = node.items()
        if not isinstance(children, list) or not children or len(children) > MAX_GROUP:
            raise _bad(f"'{kind}' takes a list of 1 to {MAX_GROUP} filters.")
        return {kind: [_normalise(child, depth + 1, counter) for child in children]}
    if "field" in node and "op" in node:
        extra = set(node) - {"field", "op", "value"}
        if extra:
            raise _bad(f"unknown key(s) in condition: {', '.join(sorted(extra))}.")
        return _condition(node["field"], node["op"], node.get("value"), counter)
    # Shorthand: {"product": "web", "year": {"gte": 2020}}
    reserved = sorted(set(node) & set(RESERVED))
    if reserved:
        raise _bad(
            f"{reserved[0]!r} is not a metadata field here: a condition is "
            '{"field": ..., "op": ..., "value": ...}, a group {"and": [...]} or {"or": [...]} on its own.'
        )
    if len(node) > MAX_GROUP:
        raise _bad(f"a shorthand filter names at most {MAX_GROUP} fields; group more with 'and'.")
    conditions = []
    for key, value in node.items():
        if isinstance(value, dict):
            if not value:
                raise _bad(f'{key!r} needs an operator, e.g. {{"eq": ...}}.')
            conditions.extend(_condition(key, op, v, counter) for op, v in value.items())
        else:
            conditions.append(_condition(key, "eq", value, counter))
    return conditions[0] if len(conditions) == 1 else {"and": conditions}


def _condition(name, op, value, counter: list[int]) -> dict:
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise _bad(f"metadata filter has more than {MAX_CONDITIONS} conditions.")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise _bad(f"a condition's field must be a non-empty string of at most {MAX_NAME} characters.")
    if op not in OPERATORS:
        raise _bad(f"unknown operator {op!r} on {name!r}: use one of {', '.join(OPERATORS)}.")
    if op in ("in", "nin"):
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise _bad(f"'{op}' on {name!r} takes a non-empty list of at most {MAX_LIST} values.")
        if any(isinstance(v, (dict, list)) for v in value):
            raise _bad(f"'{op}' on {name!r} takes a list of plain values.")
    elif op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _bad(f"'{op}' on {name!r} compares with a number or a string.")
    elif op in TEXT_OPERATORS:
        if not isinstance(value, str) or not value:
            raise _bad(f"'{op}' on {name!r} takes a non-empty string.")
    elif op == "exists":
        if not isinstance(value, bool):
            raise _bad(f"'exists' on {name!r} takes true or false.")
    elif isinstance(value, (dict, list)):
        raise _bad(f"'{op}' on {name!r} compares with a plain value (string, number, boolean or null).")
    if any(isinstance(v, str) and len(v) > MAX_TEXT for v in (value if isinstance(value, list) else [value])):
        raise _bad(f"'{op}' on {name!r} compares with text of at most {MAX_TEXT} characters.")
    return {"field": name, "op": op, "value": value}


_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _compile(node: dict, params: list) -> str:
    if "and" in node or "or" in node:
        ((kind, children),) = node.items()
        joined = f" {kind.upper()} ".join(_compile(child, params) for child in children)
        return f"({joined})"
    name, op, value = node["field"], node["op"], node["value"]
    # The chunk's value wins over the document's (same as ``d.metadata || c.metadata``, cheaper).
    item = "coalesce(c.metadata -> %s, d.metadata -> %s)"
    text = "coalesce(c.metadata ->> %s, d.metadata ->> %s)"
    if op == "eq":
        params.extend([name, name, json.dumps(value)])
        return f"{item} = %s::jsonb"
    if op == "ne":
        params.extend([name, name, json.dumps(value)])
        return f"{item} IS DISTINCT FROM %s::jsonb"
    if op in ("in", "nin"):
        params.extend([name, name, [json.dumps(v) for v in value]])
        test = f"{item} = ANY(%s::jsonb[])"
        return test if op == "in" else f"NOT coalesce({test}, false)"
    if op == "exists":
        params.extend([name, name])
        test = f"coalesce({item} NOT IN ('null'::jsonb, '\"\"'::jsonb), false)"
        return test if value else f"NOT {test}"
    if op in TEXT_OPERATORS:
        # strpos/left/right, never LIKE: the value is data, not a pattern
        string = f"lower({text})"
        if op in ("starts_with", "ends_with"):
            side = "left" if op == "starts_with" else "right"
            params.extend([name, name, name, name, value, value])
            return f"(jsonb_typeof({item}) = 'string' AND {side}({string}, char_length(%s)) = lower(%s))"
        params.extend([name, name, name, name, value, name, name, name, name, value])
        test = (
            f"(jsonb_typeof({item}) = 'string' AND strpos({string}, lower(%s)) > 0 "
            f"OR jsonb_typeof({item}) = 'array' AND {item} @> jsonb_build_array(%s::text))"
        )
        return test if op == "contains" else f"NOT coalesce({test}, false)"
    symbol = _COMPARE[op]
    if isinstance(value, str):
        params.extend([name, name, name, name, value])
        return f"(jsonb_typeof({item}) = 'string' AND {text} {symbol} %s)"
    # Numbers compare numerically, also when stored as numeric strings (CSV columns are text).
    params.extend([name, name] * 4 + [value])
    return (
        f"(CASE WHEN jsonb_typeof({item}) = 'number' THEN {text}::numeric "
        f"WHEN {text} ~ '^\\s*-?[0-9]+(\\.[0-9]+)?\\s*$' THEN {text}::numeric "
        f"END) {symbol} %s"
    )


def search_filters_build(*, content_types=None, categories=None, document_ids=None, metadata=None) -> SearchFilters:
    from knowledge.models import Document

    for content_type in content_types or ():
        if content_type not in Document.ContentType.values:
            raise DomainError(
                f"Unknown content type {str(content_type)[:40]!r}: use {', '.join(Document.ContentType.values)}.",
                field="filters.content_types",
            )
    for category in categories or ():
        inputs.text(category, field="filters.categories", label="a category filter")
    if metadata:
        inputs.json_value(metadata, field="filters.metadata", label="the metadata filter")
    counter = [0]
    normalised = _normalise(metadata, 1, counter) if metadata else None
    return SearchFilters(
        content_types=tuple(sorted(set(content_types or ()))),
        categories=tuple(sorted(set(categories or ()))),
        document_ids=tuple(sorted(set(document_ids or ()))),
        metadata=normalised,
        conditions=counter[0],
    )
