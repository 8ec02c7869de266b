"""Serializer pieces every API uses, so what the OpenAPI schema says is what validation does.

- ``StrictSerializer``: a request body with a field it does not know is refused (400 naming the
  field) and the schema says so (``additionalProperties: false``), instead of a misspelt
  parameter being silently ignored.
- ``TextField``: text; NUL characters (which PostgreSQL cannot store and no person types) are
  removed; a required text must hold more than whitespace, and the schema says so (``\\S``).
- ``JsonObjectField``: a JSON object (the schema says ``type: object``), NUL characters removed
  (``tenants/inputs.py``); in a form it comes as a JSON text part.
- ``FormBooleanField``: ``true``/``false`` only (a form's other spellings are refused, as the
  schema's ``boolean`` says); in JSON bodies ``JsonBooleanField``, ``JsonIntegerField`` and
  ``JsonFloatField`` take JSON's own types only (not ``"5"``, not ``false`` for 0).
- ``query_params``: a query string as plain values (an empty ``?days=`` is a value to check, not
  an absent one).
- ids are bigints: ``id_field``.
"""

from __future__ import annotations

import json

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tenants import inputs
from tenants.errors import DomainError

ID_MAX = 2**63 - 1


class StrictSerializer(serializers.Serializer):
    strict = True  # read by chatbot_training/openapi.py: additionalProperties false

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: [f"Unknown field; this operation takes {', '.join(self.fields)}."]}
                )
        return super().to_internal_value(data)


def query_params(request) -> dict:
    return request.query_params.dict()


class TextField(serializers.CharField):
    default_error_messages = {"type": "must be text (a JSON string)."}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]

    def to_internal_value(self, data):
        if not isinstance(data, str):  # a number or a boolean is not text, whatever DRF would make of it
            self.fail("type")
        return super().to_internal_value(data).replace("\x00", "")

    def run_validation(self, data=serializers.empty):
        if isinstance(data, str):
            data = data.replace("\x00", "")
        return super().run_validation(data)


class TextFieldSchema(OpenApiSerializerFieldExtension):
    target_class = TextField

    def map_serializer_field(self, auto_schema, direction):
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        if direction == "request" and not self.target.allow_blank:
            schema["pattern"] = "\\S"  # more than whitespace (the text is trimmed)
        return schema


@extend_schema_field({"type": "string", "format": "binary", "minLength": 1})
class UploadFileField(serializers.FileField):
    """A file part that is not empty (the schema says so; so does validation)."""

    def __init__(self, **kwargs):
        super().__init__(allow_empty_file=False, **kwargs)


class FormBooleanField(serializers.BooleanField):
    TRUE_VALUES = {True, "true", "True"}
    FALSE_VALUES = {False, "false", "False"}
    NULL_VALUES = set()


@extend_schema_field({"type": "object", "additionalProperties": True})
class JsonObjectField(serializers.JSONField):
    default_error_messages = {"object": "must be a JSON object."}

    def __init__(self, *, max_bytes: int = 20_000, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            if isinstance(data, str):
                data = inputs.json_loads(data, field=self.field_name, clean=True) if data.strip() else {}
            data = inputs.json_clean(data, field=self.field_name)
        except DomainError as exc:
            raise serializers.ValidationError(exc.message.removeprefix(f"{self.field_name} ")) from None
        if not isinstance(data, dict):
            self.fail("object")
        if len(json.dumps(data)) > self.max_bytes:
            raise serializers.ValidationError(f"must be at most {self.max_bytes // 1000} kB of JSON.")
        return data


class JsonBooleanField(serializers.BooleanField):
    TRUE_VALUES = {True}
    FALSE_VALUES = {False}
    NULL_VALUES = {None}


class JsonIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, float) and data.is_integer():  # JSON Schema's integer: 1.0 is one
            data = int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class JsonFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


def id_field(*, json: bool = False, **kwargs) -> serializers.IntegerField:
    """A bigint id; ``json``: in a JSON body (a number, not text)."""
    field = JsonIntegerField if json else serializers.IntegerField
    return field(min_value=1, max_value=ID_MAX, **kwargs)
