"""Backup and restore (chatbot_training/backup.py): a real pg_dump/pg_restore round trip onto an
empty second database on the embedded server, checked as the app role under row-level security."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.db import connection

from chatbot_training import backup
from tenants.errors import DomainError
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


def _search_on(database: str, api, bundle, settings) -> dict:
    """The API's answers to QUERIES with the app's connections on ``database`` (then put back)."""
    from django.db import connections

    from search.access import access_cache

    names = {alias: connections[alias].settings_dict["NAME"] for alias in ("default", "maintenance")}
    prefix = settings.SEARCH_CACHE_PREFIX
    access_cache._drop()  # its listener is on the test database: listen on the restored one instead
    access_cache.retry_at = 0.0
    connections.close_all()
    for alias in names:
        connections[alias].settings_dict["NAME"] = database
    settings.SEARCH_CACHE_PREFIX = f"search:{database}:{uuid.uuid4().hex[:6]}:"
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone()[0] == database
        found = {}
        for query in QUERIES:
            body = api.post("/api/search", {"query": query, "chatbot_id": bundle.chatbot.id}, format="json").json()
            assert body["cached"] is False, body
            found[query] = [(hit["chunk_id"], hit["similarity_score"]) for hit in body["results"]]
        return found
    finally:
        access_cache._drop()  # the fast path's listener was on the restored database: closed, reconnects at once
        access_cache.retry_at = 0.0
        connections.close_all()
        for alias, name in names.items():
            connections[alias].settings_dict["NAME"] = name
        settings.SEARCH_CACHE_PREFIX = prefix


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

    # the same search answers through the API, served from the restored database and files
    # (a new cache prefix: nothing answered from the source database's cache)
    restored = _search_on(empty_database, api, bundle, settings)
    assert restored == answers

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


def test_backup_of_a_bucket_restores_into_an_empty_bucket(bundle, tmp_path, settings, empty_database):
    """Uploads and model artifacts in S3 (a real S3-speaking server, moto's): the backup reads them
    through the storage API and restore writes them into another, empty bucket, names unchanged."""
    from storages.backends.s3 import S3Storage

    from bench.cluster import S3Server

    with S3Server(tmp_path / "s3") as s3:
        s3.client().create_bucket(Bucket="restored")

        def bucket(name: str, location: str) -> S3Storage:
            return S3Storage(
                bucket_name=name, location=location, endpoint_url=s3.url, region_name="us-east-1",
                access_key="testing", secret_key="testing", addressing_style="path", file_overwrite=True,
            )  # fmt: skip

        media, models = bucket(s3.bucket, "media"), bucket(s3.bucket, "models")
        media.save("uploads/2026/12/02/faq.csv", ContentFile(SAMPLE_FAQ_CSV.encode()))
        models.save("tenant-1/chatbot-1/v1-job1/model.safetensors", ContentFile(b"\x00weights"))
        owner_url = _on(settings.DATABASE_OWNER_URL, connection.settings_dict["NAME"])
        manifest = backup.backup(tmp_path / "bk", owner_url=owner_url, media_root=media, models_dir=models)
        assert {e["path"] for e in manifest["files"]} == {
            "files/media/uploads/2026/12/02/faq.csv",
            "files/models/tenant-1/chatbot-1/v1-job1/model.safetensors",
        }
        target = {"media_root": bucket("restored", "media"), "models_dir": bucket("restored", "models")}
        target_owner = _on(settings.DATABASE_OWNER_URL, empty_database)
        backup.restore(tmp_path / "bk", owner_url=target_owner, app_url=None, **target)
        restored = s3.client().list_objects_v2(Bucket="restored")["Contents"]
        assert sorted(item["Key"] for item in restored) == [
            "media/uploads/2026/12/02/faq.csv",
            "models/tenant-1/chatbot-1/v1-job1/model.safetensors",
        ]
        with target["models_dir"].open("tenant-1/chatbot-1/v1-job1/model.safetensors") as handle:
            assert handle.read() == b"\x00weights"
        with pytest.raises(DomainError, match="--force"):  # the target now holds data
            backup.restore(tmp_path / "bk", owner_url=target_owner, app_url=None, **target)
