"""Connection pooling (chatbot_training/pooling.py): Django's psycopg pool in a real granian web
server under row-level security, two tenants' requests interleaved on the same few pooled
connections; and the PgBouncer transaction-mode settings. No async work: nothing needs a worker."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import environ
import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from bench.cluster import Cluster
from chatbot_training import pooling
from tests.conftest import insert_vectors


def _configure(monkeypatch, **variables) -> dict:
    for name in ("DATABASE_POOL", "DATABASE_PGBOUNCER", "DATABASE_CONN_MAX_AGE", "DATABASE_PREPARE_THRESHOLD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    config = {"CONN_MAX_AGE": 60, "OPTIONS": {"prepare_threshold": 5, "options": "-c statement_timeout=15000"}}
    return pooling.configure(config, environ.Env())


def test_pool_and_pgbouncer_settings(monkeypatch):
    assert _configure(monkeypatch)["OPTIONS"] == {"prepare_threshold": 5, "options": "-c statement_timeout=15000"}
    pooled = _configure(monkeypatch, DATABASE_POOL="true", DATABASE_POOL_MAX_SIZE="3")
    assert pooled["CONN_MAX_AGE"] == 0 and pooled["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 3, "timeout": 10.0}
    bouncer = _configure(monkeypatch, DATABASE_PGBOUNCER="transaction")
    assert bouncer["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert bouncer["OPTIONS"]["prepare_threshold"] is None and "options" not in bouncer["OPTIONS"]
    assert "DISABLE_SERVER_SIDE_CURSORS" not in _configure(monkeypatch, DATABASE_PGBOUNCER="session")
    with pytest.raises(ImproperlyConfigured, match="not a pooling mode"):
        _configure(monkeypatch, DATABASE_PGBOUNCER="statement")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_CONN_MAX_AGE"):
        _configure(monkeypatch, DATABASE_POOL="true", DATABASE_CONN_MAX_AGE="60")
    with pytest.raises(ImproperlyConfigured, match="min size"):
        _configure(monkeypatch, DATABASE_POOL="true", DATABASE_POOL_MIN_SIZE="5", DATABASE_POOL_MAX_SIZE="2")


@pytest.mark.django_db(transaction=True)
def test_pooled_connections_carry_no_tenant_from_one_request_to_the_next(bundle, other_bundle, worker_env, tmp_path):
    ours = insert_vectors(bundle.chatbot, [[1.0] + [0.0] * 383] * 3, title="acme-only")[0]
    theirs = insert_vectors(other_bundle.chatbot, [[0.0, 1.0] + [0.0] * 382] * 2, title="globex-only")[0]
    env = {**worker_env, "SEARCH_CACHE_PREFIX": f"search:pool:{uuid.uuid4().hex[:8]}:"}
    pool = {"DATABASE_POOL": "true", "DATABASE_POOL_MIN_SIZE": "1", "DATABASE_POOL_MAX_SIZE": "2"}
    with Cluster({**env, **pool}, tmp_path / "hosts", webs=1, workers=0) as cluster:
        (url,) = cluster.urls

        def call(index: int):
            who = (bundle, ours) if index % 2 else (other_bundle, theirs)
            (tenant, document), mine = who, who[0].chatbot.pk
            headers = {"Authorization": f"Bearer {tenant.api_key}"}
            listing = requests.get(f"{url}/api/training-data/{mine}", headers=headers, timeout=30)
            stranger = bundle.chatbot.pk if tenant is other_bundle else other_bundle.chatbot.pk
            foreign = requests.get(f"{url}/api/training-data/{stranger}", headers=headers, timeout=30)
            found = requests.get(f"{url}/api/documents/{document}", headers=headers, timeout=30)
            return tenant.tenant.pk, listing.status_code, listing.json(), foreign.status_code, found.status_code

        with ThreadPoolExecutor(8) as threads:  # more clients than the server's request threads
            answers = list(threads.map(call, range(48)))
        with connection.cursor() as cursor:  # the app role sees its own sessions
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            sessions = cursor.fetchone()[0]
    for tenant_id, status, body, foreign, found in answers:
        assert status == 200 and foreign == 404 and found == 200, (status, foreign, found, body)
        titles = json.dumps(body)
        if tenant_id == bundle.tenant.pk:
            assert "acme-only" in titles and "globex-only" not in titles
        else:
            assert "globex-only" in titles and "acme-only" not in titles
    # two pooled connections, and the fast path's listener; four request threads without a pool
    assert sessions <= 3, sessions
