"""Chatbot searches answered in front of Django: a thin WSGI adapter over the search pipeline,
for ``POST /api/search`` and OpenAI's ``POST /v1/vector_stores/{id}/search`` (``_route``: each
entry point's own parser and presenter around the same access, pipeline and framing).

``POST /api/search`` is the hot path: a cached answer should cost a cache lookup, an uncached
one the embedding and the SQL, not a full Django/DRF request around them. ``FastPathWSGI`` wraps
the WSGI application (``chatbot_training/wsgi.py``) and ``SearchFastPathMiddleware`` (first in
``MIDDLEWARE``, for the test client) does the same inside Django. Each parses the body with the
one request parser (``search/arguments.py``), names the caller through the access cache
(``search/access.py``: the same ``SearchPrincipal`` the DRF view gets) and calls the same
``search_answer`` the view calls; only the framing differs. A request is taken only when every
part of it is plainly valid; anything else — an unusual body, a bad key, a refused scope, another
tenant's chatbot, a failure — falls through to the normal view, which answers it (and its errors)
in full. A key over its limit is answered here: 429 with ``Retry-After``.
"""

from __future__ import annotations

import io
import json
import logging
import re

from django.conf import settings
from django.http import HttpResponse

from search import services
from search.access import search_access_get
from search.arguments import search_arguments_parse
from search.presenters import search_payload
from tenants.errors import DomainError, Throttled, error_body
from tenants.scoping import no_tenant_context

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
VECTOR_STORE_SEARCH = re.compile(r"/v1/vector_stores/([A-Za-z0-9_]{1,40})/search")


def search_answer(meta: dict, body: bytes, path: str = "/api/search") -> tuple[int, bytes, int | None] | None:
    """``(status, JSON body, Retry-After)`` for a search request to ``path`` (``meta``: WSGI
    environ or ``request.META``): 200 with the results, or 429 when the key is over its plan's
    rate limit; None when the full path must answer it. Starts with no tenant scope, like any
    request."""
    route = _route(path)
    if route is None:
        return None
    with no_tenant_context():
        return _search_answer(meta, body, *route)


def _openai_throttled(throttled: Throttled) -> dict:
    from search.apis.openai.errors import openai_error_body

    return openai_error_body(429, throttled.message)


def _route(path: str):
    """How a search entry point's body is parsed and its result rendered: ``POST /api/search``, and
    OpenAI's ``POST /v1/vector_stores/{id}/search`` (``search/apis/openai/vector_stores.py``)."""
    if path == "/api/search":
        return search_arguments_parse, search_payload, lambda t: error_body(t.code, t.message)
    found = VECTOR_STORE_SEARCH.fullmatch(path)
    if found is None:
        return None
    from search.apis.openai import vector_stores

    def parse(data):
        chatbot_id = vector_stores.chatbot_id_of(found.group(1))
        return search_arguments_parse(vector_stores.vector_store_search_body(data, chatbot_id=chatbot_id))

    return parse, vector_stores.search_results_payload, _openai_throttled


def _search_answer(meta: dict, body: bytes, parse, render, throttled_body) -> tuple[int, bytes, int | None] | None:
    parts = meta.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    if not meta.get("CONTENT_TYPE", "").startswith("application/json") or len(body) > MAX_BODY:
        return None
    try:
        args = parse(json.loads(body, parse_constant=_no_constant))
    except (ValueError, RecursionError, DomainError):  # the full path answers it, with the same message
        return None
    access = search_access_get(chatbot_id=args.chatbot_id, raw_key=parts[1])
    if access is None:
        return None
    try:
        result = services.search_answer(principal=access.principal, args=args, chatbot=access.chatbot)
    except Throttled as throttled:
        return 429, _json(throttled_body(throttled)), throttled.retry_after
    except DomainError:  # refused scope, restricted chatbot: the full path answers it in full
        return None
    return 200, _json(render(result)), None


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


HEADERS = [
    ("Content-Type", "application/json"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]


def _secure(environ: dict) -> bool:
    header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header:
        return environ.get(header[0], "").split(",")[0].strip() == header[1]
    return environ.get("wsgi.url_scheme") == "https"


def _headers(secure: bool, retry_after: int | None = None) -> list[tuple[str, str]]:
    """What SecurityMiddleware would add to this response (and Retry-After of a 429)."""
    if retry_after is not None:
        return [*_headers(secure), ("Retry-After", str(retry_after))]
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        return [*HEADERS, ("Strict-Transport-Security", hsts)]
    return HEADERS


class SearchFastPathMiddleware:
    """The fast path inside Django (the test client, or a server not using ``FastPathWSGI``)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        secure = _secure(request.META)
        if (
            request.method == "POST"
            and _route(request.path_info) is not None
            and (secure or not settings.SECURE_SSL_REDIRECT)  # else Django redirects it
        ):
            try:
                answer = search_answer(request.META, request.body, request.path_info)
            except Exception:
                logger.warning("search fast path gave up; the full path takes over", exc_info=True)
                answer = None
            if answer is not None:
                status, content, retry_after = answer
                response = HttpResponse(content, status=status)
                for name, value in _headers(secure, retry_after):
                    response[name] = value
                response["Content-Length"] = str(len(content))
                return response
        return self.get_response(request)


class FastPathWSGI:
    """The fast path in front of Django's WSGI handler: no request object, signals or middleware
    for a search it can answer; everything else goes to Django untouched (a body read here is
    handed on)."""

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        secure = _secure(environ)
        if (
            environ.get("REQUEST_METHOD") == "POST"
            and _route(environ.get("PATH_INFO", "")) is not None
            and (secure or not settings.SECURE_SSL_REDIRECT)  # else Django redirects it
        ):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if 0 < length <= MAX_BODY:
                body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(body)
                answer = None
                try:
                    answer = search_answer(environ, body, environ["PATH_INFO"])
                except Exception:  # e.g. the database went away: Django answers (and reconnects)
                    logger.warning("search fast path gave up; the full path takes over", exc_info=True)
                if answer is not None:
                    status, content, retry_after = answer
                    start_response(
                        "200 OK" if status == 200 else "429 Too Many Requests",
                        [*_headers(secure, retry_after), ("Content-Length", str(len(content)))],
                    )
                    return [content]
        return self.application(environ, start_response)
