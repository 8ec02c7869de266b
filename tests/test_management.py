import io
import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_create_tenant_prints_working_credentials():
    out = io.StringIO()
    call_command("create_tenant", "--name", "Initech", "--chatbot", "Helpdesk", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert set(result) == {"tenant_id", "chatbot_id", "api_key", "username", "password", "plan"}
    assert result["plan"] == "standard"
    from django.contrib.auth import authenticate
    from rest_framework.test import APIClient

    assert authenticate(username=result["username"], password=result["password"]) is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {result['api_key']}")
    assert client.get(f"/api/training-data/{result['chatbot_id']}").status_code == 200


def test_create_tenant_with_a_plan_sets_its_keys_rate_limit(settings):
    from django.core.management.base import CommandError
    from rest_framework.test import APIClient

    settings.API_RATE_LIMITS = {"free": 2, "standard": 600, "enterprise": 6000}
    out = io.StringIO()
    call_command("create_tenant", "--name", "Tiny", "--chatbot", "Bot", "--plan", "free", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["plan"] == "free"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {result['api_key']}")
    assert [client.get("/api/chatbots").status_code for _ in range(3)] == [200, 200, 429]
    with pytest.raises(CommandError, match="Unknown plan 'gold': use one of free, standard, enterprise"):
        call_command("create_tenant", "--name", "Gold", "--chatbot", "Bot", "--plan", "gold", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_staff_set_a_tenants_plan_in_the_admin_and_owners_see_it(bundle, client):
    from django.contrib.auth import get_user_model

    from tenants.models import Tenant
    from tests.conftest import as_tenant

    staff = get_user_model().objects.create_superuser("staff-plan", password="pw-staff-1")
    client.force_login(staff)
    page = client.get(f"/admin/tenants/tenant/{bundle.tenant.pk}/change/").content.decode()
    assert "enterprise — 6,000 requests/min per key" in page
    response = client.post(
        f"/admin/tenants/tenant/{bundle.tenant.pk}/change/",
        {"name": bundle.tenant.name, "slug": bundle.tenant.slug, "plan": "enterprise", "is_active": "on",
         "created_at_0": "2026-01-01", "created_at_1": "00:00:00", "membership_set-TOTAL_FORMS": "0",
         "membership_set-INITIAL_FORMS": "0"},
    )  # fmt: skip
    errors = [line for line in response.content.decode().splitlines() if "errorlist" in line or "errornote" in line]
    assert response.status_code == 302, errors
    with as_tenant(bundle):
        assert Tenant.objects.get(pk=bundle.tenant.pk).plan == "enterprise"
    client.logout()
    assert client.login(username=bundle.username, password=bundle.password)
    assert "Plan <b>enterprise</b>: each key may make 6000 requests a minute" in client.get("/keys/").content.decode()


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # it finds the demo tenant there
def test_ensure_demo_renews_the_key_and_password():
    first, second = io.StringIO(), io.StringIO()
    call_command("ensure_demo", "--json", stdout=first)
    call_command("ensure_demo", "--json", stdout=second)
    a, b = json.loads(first.getvalue()), json.loads(second.getvalue())
    assert a["tenant_id"] == b["tenant_id"] and a["api_key"] != b["api_key"]
    from rest_framework.test import APIClient

    old, new = APIClient(), APIClient()
    old.credentials(HTTP_AUTHORIZATION=f"Bearer {a['api_key']}")
    new.credentials(HTTP_AUTHORIZATION=f"Bearer {b['api_key']}")
    assert old.get("/api/chatbots").status_code == 401 and new.get("/api/chatbots").status_code == 200


def test_periodic_tasks_are_scheduled_idempotently():
    from django_celery_beat.models import PeriodicTask

    call_command("setup_periodic_tasks", stdout=io.StringIO())
    call_command("setup_periodic_tasks", stdout=io.StringIO())
    task = PeriodicTask.objects.get(task="knowledge.ingestion_jobs_sweep")
    assert task.enabled and task.interval.every == 60 and task.expire_seconds == 55


def test_no_missing_migrations():
    call_command("makemigrations", "--check", "--dry-run", stdout=io.StringIO())


def test_api_requests_run_in_their_tenants_context(bundle, monkeypatch):
    """Every API request marks its tenant (the hook row-level security will use) and clears it."""
    from rest_framework.test import APIClient

    from tenants import scoping
    from tenants.selectors import chatbot_list

    seen = []
    monkeypatch.setattr(
        "tenants.apis.chatbot_list", lambda **kw: seen.append(scoping.current_tenant_id()) or chatbot_list(**kw)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    assert client.get("/api/chatbots").status_code == 200
    assert seen == [bundle.tenant.pk] and scoping.current_tenant_id() is None


def test_a_command_attached_to_the_embedded_database_leaves_it_running():
    """A management command run beside `make run` (or this test run) attaches to the embedded
    PostgreSQL and, on exit, must not stop it for the others."""
    import os
    import subprocess
    import sys

    from django.conf import settings
    from django.db import connection

    if os.environ.get("DATABASE_URL"):
        pytest.skip("runs against an external database")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import psycopg

    with psycopg.connect(settings.DATABASE_URL, connect_timeout=5) as fresh:  # a new connection still gets in
        assert fresh.execute("SELECT 1").fetchone() == (1,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_pgvector_build_runs_on_this_cpu():
    """``make install`` swaps in a portable pgvector where the shipped one needs AVX-512; the probe
    (a 384-dimension cosine on a throw-away server) must pass on the build in use."""
    from chatbot_training.pgvector_cpu import probe

    assert probe() is None
