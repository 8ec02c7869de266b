"""Input every interface passes to the services, checked once for what PostgreSQL would refuse
(NUL characters in text and JSON, NaN and Infinity in JSON) so a person gets a 400 or a readable
message naming the field, never a 500 from the database."""

from __future__ import annotations

import json
import math

from tenants.errors import DomainError

MAX_JSON_DEPTH = 32


def text(value, *, field: str, max_length: int | None = None, label: str | None = None) -> str:
    """``value`` as text: a string without NUL characters, at most ``max_length`` long."""
    label = label or field
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DomainError(f"{label} must be text.", field=field)
    if "\x00" in value:
        raise DomainError(f"{label} contains a NUL character (\\x00); remove it and try again.", field=field)
    if max_length is not None and len(value) > max_length:
        raise DomainError(f"{label} must be at most {max_length} characters.", field=field)
    return value


def json_value(value, *, field: str, label: str | None = None):
    """``value`` if PostgreSQL's jsonb can hold it: no NUL in strings or keys, only finite numbers,
    nested at most ``MAX_JSON_DEPTH`` levels."""
    return _json(value, field=field, label=label or field, clean=False, depth=0)


def json_clean(value, *, field: str, label: str | None = None):
    """``value`` with NUL characters removed from its strings and keys (PostgreSQL's jsonb cannot
    hold them, and in support data they mean nothing); NaN/Infinity and too deep nesting refused."""
    return _json(value, field=field, label=label or field, clean=True, depth=0)


def _json(value, *, field: str, label: str, clean: bool, depth: int):
    if depth > MAX_JSON_DEPTH:
        raise DomainError(f"{label} is nested more than {MAX_JSON_DEPTH} levels deep.", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise DomainError(f"{label} contains {value!r}, which is not a JSON number.", field=field)

    def string(item):
        return str(item).replace("\x00", "") if clean else text(item, field=field, label=label)

    if isinstance(value, str):
        return string(value)
    if isinstance(value, dict):
        return {
            string(key): _json(item, field=field, label=label, clean=clean, depth=depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_json(item, field=field, label=label, clean=clean, depth=depth + 1) for item in value]
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_loads(raw: str, *, field: str, label: str | None = None, clean: bool = False):
    """Strict JSON from a form or query string: NaN, Infinity and -Infinity are refused, and the
    value must pass ``json_value`` (or, with ``clean``, is made to: ``json_clean``)."""
    label = label or field
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise DomainError(f"{label} is not valid JSON ({exc}).", field=field) from None
    return (json_clean if clean else json_value)(value, field=field, label=label)
