from __future__ import annotations

from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"database unavailable: {exc.__class__.__name__}"


def _check_redis() -> str | None:
    from tenants import redis_client

    return redis_client.ping()


def _check_worker() -> str | None:
    from chatbot_training.celery import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:
        return f"worker check failed: {exc.__class__.__name__}"
    return None if replies else "no live Celery worker answered"


def readyz(request):
    """Ready to do useful work: database, Redis and at least one worker. 503 names what is down."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["worker"] = _check_worker() if checks["redis"] is None else "not checked: redis is down"
    down = {name: problem for name, problem in checks.items() if problem}
    body = {
        "status": "ok" if not down else "unavailable",
        "checks": {name: (problem or "ok") for name, problem in checks.items()},
    }
    if down:
        body["down"] = sorted(down)
    return JsonResponse(body, status=503 if down else 200)


DATABASE_RETRY_AFTER_SECONDS = 5


def server_error(request):
    """handler500: an unavailable database (restarted, failed over, connection refused) is a 503
    with Retry-After, not a 500 — JSON on the API, a short page on the dashboard; anything else
    stays a 500 (JSON on the API)."""
    import sys

    from django.db import InterfaceError, OperationalError
    from django.http import HttpResponse
    from psycopg.errors import QueryCanceled

    from tenants.errors import error_body

    error = sys.exc_info()[1]
    unavailable = isinstance(error, (OperationalError, InterfaceError))
    if unavailable and isinstance(getattr(error, "__cause__", None), QueryCanceled):
        status, code = 503, "timeout"
        message = "The request took too long in the database and was stopped; retry, or ask for less at once."
    elif unavailable:
        status, code = 503, "unavailable"
        message = f"The database is unavailable; retry in {DATABASE_RETRY_AFTER_SECONDS} s."
    else:
        status, code, message = 500, "server_error", "Something went wrong on our side; it has been logged."
    if request.path.startswith("/api/"):
        response = JsonResponse(error_body(code, message), status=status)
    else:
        page = f"<!doctype html><title>{status}</title><h1>{'Temporarily unavailable' if unavailable else 'Error'}</h1>"
        response = HttpResponse(f"{page}<p>{message}</p>", status=status)
    if unavailable:
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def not_found(request, exception=None):
    """handler404: JSON under /api/ (an unknown path or an id that is not a number there is the
    API's 404, in its error format), Django's page elsewhere."""
    from django.views.defaults import page_not_found

    from tenants.errors import error_body

    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "No such API endpoint or object."), status=404)
    return page_not_found(request, exception)
