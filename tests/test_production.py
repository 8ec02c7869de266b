"""Production settings: ``check --deploy`` passes with production environment variables, secrets
only from the environment, security headers (also on the search fast path), 413 JSON for
oversized bodies. Management commands run as real subprocesses on the embedded services."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DATABASE_URL": django_settings.DATABASE_URL,
        "DATABASE_OWNER_URL": django_settings.DATABASE_OWNER_URL,
        "DATABASE_MAINTENANCE_URL": django_settings.DATABASE_MAINTENANCE_URL,
        "REDIS_URL": django_settings.REDIS_URL,
        "EMBEDDING_WARM_UP": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),  # an external database: secrets from the environment
        **env,
    }
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set by the browser test's runner, never in production
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "bots.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://bots.example.com",
}


def test_check_deploy_passes_with_production_environment():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION,
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(50))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_one_database_role_for_everything_is_warned_about():
    result = _manage("check", DATABASE_OWNER_URL="", DATABASE_MAINTENANCE_URL="")
    assert result.returncode == 0 and "tenants.W001" in result.stderr + result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    result = _manage("check", **PRODUCTION, DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_security_headers_and_https_redirect(settings, bundle):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    page = client.get("/healthz", secure=True)
    assert page["Strict-Transport-Security"].startswith("max-age=31536000; includeSubDomains")
    assert page["X-Content-Type-Options"] == "nosniff" and page["X-Frame-Options"] == "DENY"
    assert client.get("/login/").status_code == 301  # plain HTTP is sent to HTTPS
    body = {"query": "hello", "chatbot_id": bundle.chatbot.pk}
    auth = {"HTTP_AUTHORIZATION": f"Bearer {bundle.api_key}"}
    search = client.post("/api/search", json.dumps(body), content_type="application/json", secure=True, **auth)
    assert search.status_code == 200 and search["Strict-Transport-Security"].startswith("max-age=31536000")
    insecure = client.post("/api/search", json.dumps(body), content_type="application/json", **auth)
    assert insecure.status_code == 301  # the fast path does not answer plain HTTP either


@pytest.mark.parametrize("path", ["/api/search", "/api/upload-training-data"])
def test_oversized_json_body_is_413_with_a_json_error(api, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    huge = json.dumps({"query": "x" * (2 * 1024 * 1024), "chatbot_id": 1})
    response = api.post(path, huge, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "too_large",
        "message": "The request body is larger than the 1 MB limit.",
        "field": None,
    }


def _web_statement_timeout(env: dict) -> str:
    """What a web process (the WSGI entry point) gets: its database connection's statement timeout,
    and whether a statement longer than it is stopped."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    script = (
        "import os; os.environ['EMBEDDING_WARM_UP'] = '0'\n"
        "import chatbot_training.wsgi\n"
        "from django.db import connection, OperationalError\n"
        "with connection.cursor() as c:\n"
        "    c.execute('SHOW statement_timeout'); print(c.fetchone()[0])\n"
        "    try:\n"
        "        c.execute('SELECT pg_sleep(1)'); print('finished')\n"
        "    except OperationalError as e:\n"
        "        print('stopped', type(e.__cause__).__name__)\n"
    )
    keep = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHATBOT_PROCESS")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, env={**keep, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_web_requests_have_a_short_statement_timeout_and_workers_a_long_one(db):
    from django.db import connection

    if __import__("os").environ.get("DATABASE_URL"):
        pytest.skip("runs against the embedded database")
    assert _web_statement_timeout({"DATABASE_REQUEST_STATEMENT_TIMEOUT_MS": "300"}) == [
        "300ms", "stopped", "QueryCanceled"
    ]  # fmt: skip
    assert _web_statement_timeout({})[0] == "15s"
    with connection.cursor() as cursor:  # this process is not the web entry point: a worker's limit
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "30min"


def test_a_statement_stopped_by_the_timeout_is_a_503_that_says_so(bundle, monkeypatch):
    from django.db import OperationalError
    from psycopg.errors import QueryCanceled
    from rest_framework.test import APIClient

    def too_long(**kwargs):
        try:
            raise QueryCanceled("canceling statement due to statement timeout")
        except QueryCanceled as exc:
            raise OperationalError("canceling statement due to statement timeout") from exc

    monkeypatch.setattr("tenants.apis.chatbot_list", too_long)
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    response = api.get("/api/chatbots")
    assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
