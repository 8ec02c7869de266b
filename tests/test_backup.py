"""Backup and restore (chatbot_training/backup.py): a real pg_dump/pg_restore round trip onto an
empty second database on the embedded server, checked as the app role under row-level security."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from tests.conftest import SAMPLE_FAQ_CSV, ingest, make_upload

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])

QUERIES = ["reset my password", "change delivery address", "payment methods"]
NEAREST = (
    "SELECT e.chunk_id, e.embedding <=> (SELECT embedding FROM knowledge_chunkembedding WHERE chunk_id = %s "
    "LIMIT 1) AS d FROM knowledge_chunkembedding e ORDER BY d, e.chunk_id LIMIT 3"
)


def _on(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _scoped(url: str, tenant_id: int, sql: str, params=()):
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", [str(tenant_id)])
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def empty_database():
    name = f"restore_{uuid.uuid4().hex[:8]}"
    admin = _on(settings.DATABASE_OWNER_URL, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_backup_restore_round_trip(bundle, api, tmp_path, settings, empty_database):
    settings.TRAINING_ARTIFACTS_DIR = str(tmp_path / "models")
    (tmp_path / "models" / "v1").mkdir(parents=True)
    (tmp_path / "models" / "v1" / "weights.bin").write_bytes(b"\x00\x01weights")
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    answers = {}
    for query in QUERIES:
        body = api.post("/api/search", {"query": query, "chatbot_id": bundle.chatbot.id}, format="json").json()
        answers[query] = [(hit["chunk_id"], hit["similarity_score"]) for hit in body["results"]]
        assert answers[query], body

    test_db = connection.settings_dict["NAME"]
    owner_url = _on(settings.DATABASE_OWNER_URL, test_db)
    call_command("backup", str(tmp_path / "bk"), owner_url=owner_url)
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    tenant_id = bundle.tenant.id
    source_docs = _scoped(_on(settings.DATABASE_URL, test_db), tenant_id, "SELECT count(*) FROM knowledge_document")
    assert manifest["row_counts"]["tenants"] == 1
    assert manifest["row_counts"]["documents"] == source_docs[0][0] >= 1
    assert manifest["row_counts"]["chunks"] >= 3
    assert manifest["row_counts"]["chunk_embeddings"] >= manifest["row_counts"]["chunks"]
    assert manifest["migrations"]["knowledge"] and manifest["pg_dump_version"].startswith("pg_dump")
    paths = {entry["path"] for entry in manifest["files"]}
    assert "files/models/v1/weights.bin" in paths
    assert any(p.startswith("files/media/") for p in paths)  # the uploaded FAQ
    assert len(manifest["database_dump"]["sha256"]) == 64

    # restore over the live test database: refused without --force
    with pytest.raises(CommandError, match="--force"):
        call_command("restore", str(tmp_path / "bk"), owner_url=owner_url)

    # restore onto an empty database, with empty file directories
    settings.MEDIA_ROOT = str(tmp_path / "media-restored")
    settings.TRAINING_ARTIFACTS_DIR = str(tmp_path / "models-restored")
    target_owner = _on(settings.DATABASE_OWNER_URL, empty_database)
    target_app = _on(settings.DATABASE_URL, empty_database)
    call_command("restore", str(tmp_path / "bk"), owner_url=target_owner, app_url=target_app)
    assert (tmp_path / "models-restored" / "v1" / "weights.bin").read_bytes() == b"\x00\x01weights"

    source_app = _on(settings.DATABASE_URL, test_db)
    for table in ("knowledge_document", "knowledge_chunk", "knowledge_chunkembedding"):
        sql = f"SELECT count(*) FROM {table}"
        assert _scoped(target_app, tenant_id, sql) == _scoped(source_app, tenant_id, sql)
        assert _scoped(target_app, tenant_id, sql)[0][0] > 0  # the app role reads them (grants + RLS)
        assert _scoped(target_app, tenant_id + 999, sql)[0][0] == 0  # and another tenant does not
    for hits in answers.values():
        top = hits[0][0]
        assert _scoped(target_app, tenant_id, NEAREST, [top]) == _scoped(source_app, tenant_id, NEAREST, [top])
        texts = "SELECT id, text FROM knowledge_chunk WHERE id = ANY(%s) ORDER BY id"
        ids = [chunk_id for chunk_id, _ in hits]
        assert _scoped(target_app, tenant_id, texts, [ids]) == _scoped(source_app, tenant_id, texts, [ids])

    # the restored database now has data: refused without --force
    with pytest.raises(CommandError, match="--force"):
        call_command("restore", str(tmp_path / "bk"), owner_url=target_owner, app_url=target_app)

    # a flipped byte in the dump: refused by the checksum, nothing touched
    dump = tmp_path / "bk" / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    with pytest.raises(CommandError, match="SHA-256"):
        call_command("restore", str(tmp_path / "bk"), owner_url=target_owner, app_url=target_app, force=True)
