"""``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{id}``: how a tenant takes its
models — the built-in one, and each chatbot's serving model, a fine-tuned version included — into
any stack that speaks OpenAI's embeddings API.

Model ids (``/v1/models`` lists the ones the key may use):

- ``all-MiniLM-L6-v2`` (also ``local:all-MiniLM-L6-v2``): the built-in local model;
- ``chatbot-<id>``: whatever serves that chatbot's searches now (``serving_for``: the built-in
  model, a fine-tuned version, or the control of a running A/B test);
- a space key such as ``local:all-MiniLM-L6-v2@ft-3-…``: one of the tenant's own versions. A
  version that transforms queries only (a query adapter or a tuned query encoder over another
  space's document vectors) gives *query* vectors; the documents it searches are embedded by the
  space its ``documents_model`` names (listed too), so a stack that indexes documents uses that one.

Every vector is the one the product's own search makes for the same text (the query path:
ONNX Runtime's float graph, one text at a time), L2-normalised.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from knowledge.embeddings import LOCAL_MODELS, ProviderError, ProviderUnavailable, provider_for, provider_for_space
from knowledge.models import EmbeddingSpace
from search.apis.openai.errors import OpenAIApi, openai_fail, openai_object
from search.services.serving import serving_for
from tenants.errors import DomainError, NotFound
from tenants.selectors import chatbot_list

FIELDS = ("model", "input", "encoding_format", "dimensions", "user")
MAX_INPUTS = 2048
MAX_INPUT_CHARS = 50_000
OWNER = "chatbot-training"


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "unavailable"


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None


def embedding_request_parse(body) -> EmbeddingRequest:
    """The one parser of ``POST /v1/embeddings`` (OpenAI's fields; token arrays refused: they are
    another tokenizer's ids)."""
    body = openai_object(body, FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        openai_fail("model", "you must provide a model parameter")
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts:
        openai_fail("input", "'input' must be a string or a non-empty array of strings.")
    if len(texts) > MAX_INPUTS:
        openai_fail("input", f"'input' takes at most {MAX_INPUTS} items; got {len(texts)}.")
    for index, text in enumerate(texts):
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            openai_fail("input", "Token arrays are not supported: send text (this server uses its own tokenizer).")
        if not isinstance(text, str) or not text.strip():
            openai_fail("input", f"'input[{index}]' must be a non-empty string.")
        if len(text) > MAX_INPUT_CHARS:
            openai_fail("input", f"'input[{index}]' is longer than {MAX_INPUT_CHARS} characters.")
    if "encoding_format" in body and body["encoding_format"] is None:
        openai_fail("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        openai_fail("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    if "dimensions" in body and body["dimensions"] is None:
        openai_fail("dimensions", "'dimensions' must be a positive integer.")
    dimensions = body.get("dimensions")
    if isinstance(dimensions, float) and dimensions.is_integer():
        dimensions = int(dimensions)
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        openai_fail("dimensions", "'dimensions' must be a positive integer.")
    if "user" in body and not isinstance(body["user"], str):
        openai_fail("user", "'user' must be a string.")
    return EmbeddingRequest(model=model.strip(), texts=[t.replace("\x00", "") for t in texts],
                            encoding_format=encoding, dimensions=dimensions)  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    id: str
    created: int
    owned_by: str
    space: EmbeddingSpace | None  # None: a built-in model with no space yet
    model_key: str


def _builtin_ids() -> dict[str, str]:
    out = {}
    for name in LOCAL_MODELS:
        out[name] = f"local:{name}"
        out[f"local:{name}"] = f"local:{name}"
    return out


def _space_entry(space: EmbeddingSpace, owner: str) -> ModelEntry:
    return ModelEntry(id=space.key, created=int(space.created_at.timestamp()), owned_by=owner, space=space,
                      model_key=space.model_key)  # fmt: skip


def models_available(*, tenant, api_key) -> list[ModelEntry]:
    """What the key may embed with: the built-in models, each of its chatbots' serving model, and
    the tenant's own versions (with the document space of any query-only version)."""
    entries = [ModelEntry(id=name, created=0, owned_by=OWNER, space=None, model_key=f"local:{name}")
               for name in LOCAL_MODELS]  # fmt: skip
    seen = {e.id for e in entries}
    for chatbot in chatbot_list(tenant=tenant, api_key=api_key).order_by("pk"):
        serving = serving_for(chatbot)
        if serving is None:
            continue
        created = int(chatbot.created_at.timestamp())
        entries.append(ModelEntry(id=f"chatbot-{chatbot.pk}", created=created, owned_by=tenant.slug,
                                  space=serving.space, model_key=serving.space.model_key))  # fmt: skip
        seen.add(f"chatbot-{chatbot.pk}")
    for space in EmbeddingSpace.objects.filter(tenant=tenant).select_related("vectors_from").order_by("pk"):
        for candidate in (space, space.vectors_from):
            if candidate is not None and candidate.key not in seen and candidate.artifact:
                entries.append(_space_entry(candidate, tenant.slug))
                seen.add(candidate.key)
    return entries


def model_resolve(*, model: str, tenant, api_key) -> ModelEntry:
    builtin = _builtin_ids().get(model)
    if builtin is not None:
        return ModelEntry(id=model, created=0, owned_by=OWNER, space=None, model_key=builtin)
    for entry in models_available(tenant=tenant, api_key=api_key):
        if entry.id == model:
            return entry
    raise NotFound(f"The model `{model}` does not exist or you do not have access to it.", field="model")


def model_payload(entry: ModelEntry) -> dict:
    body = {"id": entry.id, "object": "model", "created": entry.created, "owned_by": entry.owned_by}
    space = entry.space
    if space is not None:
        body["dimensions"] = space.dimensions
        body["embedding_space"] = space.key
        if space.vectors_from_id:  # query-only: its documents are embedded by another space
            body["documents_model"] = space.vectors_from.key
    else:
        body["dimensions"] = LOCAL_MODELS.get(entry.model_key.partition(":")[2])
    return body


def embeddings_create(*, request: EmbeddingRequest, tenant, api_key) -> dict:
    entry = model_resolve(model=request.model, tenant=tenant, api_key=api_key)
    try:
        provider = provider_for_space(entry.space) if entry.space is not None else provider_for(entry.model_key)
        if request.dimensions is not None and request.dimensions != provider.dimensions:
            openai_fail("dimensions", f"The model `{request.model}` makes {provider.dimensions}-dimensional vectors; "
                                "'dimensions' cannot change that.")  # fmt: skip
        vectors = provider.embed_queries(request.texts)
        tokens = sum(provider.count_tokens(request.texts))
    except ProviderUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
    except ProviderError as exc:
        raise DomainError(str(exc), field="model") from exc
    data = []
    for index, vector in enumerate(vectors):
        if request.encoding_format == "base64":
            import numpy as np

            vector = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


_INPUT = {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS, "pattern": "\\S"}
# The body as the server accepts it (embedding_request_parse), the contract schemathesis checks.
REQUEST_SCHEMA = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1, "pattern": "\\S"},
        "input": {"anyOf": [_INPUT, {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _INPUT}]},
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1, "description": "Only the model's own."},
        "user": {"type": "string"},
    },
}

_MODEL = inline_serializer(
    "OpenAIModel",
    {
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
    },  # fmt: skip
)


class EmbeddingsApi(OpenAIApi):
    scopes = {"post": "search"}
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="openai_embeddings_create",
        request={"application/json": REQUEST_SCHEMA},
        responses={200: OpenApiTypes.OBJECT},
        tags=["openai"],
    )
    def post(self, request):
        parsed = embedding_request_parse(request.data)
        return Response(embeddings_create(request=parsed, tenant=self.tenant, api_key=self.api_key))


class ModelListApi(OpenAIApi):
    scopes = {"get": ("search", "read")}

    @extend_schema(operation_id="openai_models_list", responses={200: OpenApiTypes.OBJECT}, tags=["openai"])
    def get(self, request):
        entries = models_available(tenant=self.tenant, api_key=self.api_key)
        return Response({"object": "list", "data": [model_payload(e) for e in entries]})


class ModelApi(OpenAIApi):
    scopes = {"get": ("search", "read")}

    @extend_schema(operation_id="openai_models_retrieve", responses={200: _MODEL}, tags=["openai"])
    def get(self, request, model_id: str):
        return Response(model_payload(model_resolve(model=model_id, tenant=self.tenant, api_key=self.api_key)))


__all__ = ["EmbeddingsApi", "ModelApi", "ModelListApi"]
