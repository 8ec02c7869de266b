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
    import redis
    from django.conf import settings

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:
        return f"redis unavailable: {exc.__class__.__name__}"


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
