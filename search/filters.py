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

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte")
MAX_CONDITIONS = 50
MAX_DEPTH = 5
MAX_LIST = 500


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
        if not isinstance(children, list) or not children:
            raise _bad(f"'{kind}' takes a non-empty list of filters.")
        return {kind: [_normalise(child, depth + 1, counter) for child in children]}
    if "field" in node and "op" in node:
        extra = set(node) - {"field", "op", "value"}
        if extra:
            raise _bad(f"unknown key(s) in condition: {', '.join(sorted(extra))}.")
        return _condition(node["field"], node["op"], node.get("value"), counter)
    # Shorthand: {"product": "web", "year": {"gte": 2020}}
    conditions = []
    for key, value in node.items():
        if key in ("and", "or"):
            conditions.append(_normalise({key: value}, depth + 1, counter))
        elif isinstance(value, dict):
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
    if not isinstance(name, str) or not name or len(name) > 200:
        raise _bad("a condition's field must be a non-empty string of at most 200 characters.")
    op = op.lstrip("$") if isinstance(op, str) else op
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
    elif isinstance(value, (dict, list)):
        raise _bad(f"'{op}' on {name!r} compares with a plain value (string, number, boolean or null).")
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
