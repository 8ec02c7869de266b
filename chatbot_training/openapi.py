"""OpenAPI schema post-processing: every operation documents the errors it can answer with.

Each error has the one JSON shape of ``tenants/errors.py`` (``{"error": {"code", "message",
"field", ...}}``). Declaring them lets clients (and schemathesis's status-code conformance check)
rely on the schema for 4xx/503 answers, not only for successes.
"""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            "required": ["code", "message"],
            "additionalProperties": True,
        }
    },
    "required": ["error"],
}

ERRORS = {
    "400": "Invalid input; `error.field` names the field.",
    "401": "Missing, invalid, revoked or expired API key.",
    "403": "The key's scopes or the member's role do not allow this (see `x-required-scopes`).",
    "404": "No such object for this tenant (another tenant's id is indistinguishable from none).",
    "405": "Method not allowed.",
    "409": "Conflicts with the object's state (for example, already processing).",
    "413": "Body or file over the size limit.",
    "415": "Unsupported media type.",
    "429": "Over the key's rate limit; see `Retry-After`.",
    "503": "A dependency (the database) is unavailable; see `Retry-After`.",
}


# Operations whose body is stated as a raw schema (another product's wire format): the body is
# required (Dify's endpoint check, a POST with no body, must get 400).
BODY_REQUIRED = ("dify_retrieval", "openai_embeddings_create", "openai_vector_stores_search")

# A search's answer names the query that feedback is sent about (OpenAPI links: clients and
# schemathesis's stateful tests follow them).
LINKS = {
    operation: {
        "SendFeedback": {"operationId": "search_feedback", "parameters": {"query_id": "$response.body#/query_id"}}
    }
    for operation in ("search", "search_hybrid")
}


def add_error_responses(result, generator, request, public):
    from search.filters import OPENAPI_COMPONENTS

    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    components.update(OPENAPI_COMPONENTS)
    reference = {"$ref": "#/components/schemas/Error"}
    for path in result.get("paths", {}).values():
        for method, operation in path.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if operation.get("operationId") in BODY_REQUIRED and "requestBody" in operation:
                operation["requestBody"]["required"] = True
            links = LINKS.get(operation.get("operationId"))
            if links and "200" in operation.get("responses", {}):
                operation["responses"]["200"]["links"] = links
            scopes = operation.get("x-required-scopes")
            if scopes:
                needs = " or ".join(f"`{s}`" for s in scopes)
                note = f"API keys need the {needs} scope (dashboard sessions: any member" + (
                    "; owners and admins for writes)." if scopes == ["write"] else ")."
                )
                operation["description"] = (operation.get("description", "") + "\n\n" + note).strip()
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
