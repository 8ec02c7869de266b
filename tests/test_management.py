import io
import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_create_tenant_prints_working_credentials():
    out = io.StringIO()
    call_command("create_tenant", "--name", "Initech", "--chatbot", "Helpdesk", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert set(result) == {"tenant_id", "chatbot_id", "api_key", "username", "password"}
    from django.contrib.auth import authenticate
    from rest_framework.test import APIClient

    assert authenticate(username=result["username"], password=result["password"]) is not None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {result['api_key']}")
    assert client.get(f"/api/training-data/{result['chatbot_id']}").status_code == 200


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
