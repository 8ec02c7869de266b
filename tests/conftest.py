"""Fixtures: real embedded PostgreSQL and Redis, the real local embedding model.

Async work: unless a test says it runs a real worker (marker ``worker``), Celery runs eagerly,
so enqueued ingestion tasks call the task function directly in the test process.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from rest_framework.test import APIClient

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
DOCS = SHARED / "fixtures" / "documents"
DATASETS = SHARED / "datasets"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"needs ../shared/{'/'.join(parts)} (the shared test data sits beside the repository "
            "on developer machines and in CI, not in a fresh clone)"
        )
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_media(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    with override_settings(MEDIA_ROOT=str(media)):
        yield media


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """The owner role creates and migrates the test database (as `manage.py migrate` does)..."""
    from tenants import dbroles

    dbroles.default_use_owner()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """...and the tests then connect as the app role, held to row-level security like the app.
    At the end, worker processes and the live server's thread may still hold connections to the
    test database: the owner closes them and drops it."""
    from django.db import connection

    from tenants import dbroles

    dbroles.default_use_app()
    dbroles.maintenance_use_own_role()
    yield
    dbroles.maintenance_use_own_role()
    for use_role in (dbroles.default_use_app, dbroles.default_use_owner):  # each ends its own role's
        use_role()
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = current_user"
            )


@contextmanager
def across_tenants():
    """Test code reading every tenant's rows, on the maintenance role's connection (as the
    sweeper and staff do). It sees committed rows only: use it in ``transaction=True`` tests
    that declare ``databases=["default", "maintenance"]``, around setup and assertions only."""
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("tests"):
        yield


@contextmanager
def as_tenant(who):
    """Test code (setup and assertions) reading or writing one tenant's rows, as that tenant's
    request or task would: row-level security shows it that tenant only. Never wrap a request,
    a streamed response or a task under test in it: they set their own scope, as in production."""
    from tenants.scoping import tenant_context

    with tenant_context(getattr(who, "tenant", who)):
        yield


@pytest.fixture(scope="session", autouse=True)
def _fresh_search_cache():
    """Chatbot ids restart with each test database: give every session its own cache keys."""
    from tenants import redis_client

    # Logs are written at once (tests read them right after a search); tests/test_search.py
    # covers the Redis-buffered path explicitly.
    with override_settings(
        SEARCH_CACHE_PREFIX=f"search-test-{uuid.uuid4().hex[:8]}:",
        SEARCH_LOG_BUFFER=False,
        SEARCH_LOG_FLUSHER_THREAD=False,  # a thread's own connection cannot see a test's rows
    ):
        redis_client.reset()
        yield


@pytest.fixture(scope="session", autouse=True)
def _eager_celery():
    from chatbot_training.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def bundle(db):
    from tenants.services import tenant_bootstrap

    return tenant_bootstrap(name="Acme", chatbot_name="Acme support", username="acme-owner", password="pw-acme-123")


@pytest.fixture
def other_bundle(db):
    from tenants.services import tenant_bootstrap

    return tenant_bootstrap(
        name="Globex", chatbot_name="Globex support", username="globex-owner", password="pw-globex-123"
    )


@pytest.fixture
def api(bundle):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    return client


@pytest.fixture
def openai_clients(live_server):
    """Official ``openai`` clients on the live server's /v1 (``make(key)``), closed afterwards: a
    kept-alive connection would keep a server thread, and its database session, alive."""
    import openai

    made = []

    def make(key: str):
        client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=60)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def run_jobs(django_capture_on_commit_callbacks):
    """Run the on-commit callbacks of the block (the enqueue), which with eager Celery calls the
    ingestion task function directly."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def make_upload(name: str, content: bytes | str) -> SimpleUploadedFile:
    if isinstance(content, str):
        content = content.encode()
    return SimpleUploadedFile(name, content)


def shared_upload(*parts: str) -> SimpleUploadedFile:
    path = shared_path(*parts)
    return SimpleUploadedFile(path.name, path.read_bytes())


def shared_subset(*parts: str, items: int) -> SimpleUploadedFile:
    """The first ``items`` rows / records / lines of a shared dataset file, same format: the
    behaviour under test does not need the whole file, and CPU embedding is slow."""
    path = shared_path(*parts)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        content = json.dumps(json.loads(text)[:items])
    elif path.suffix in (".csv", ".tsv"):
        import csv

        delimiter = "\t" if path.suffix == ".tsv" else ","
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))[: items + 1]
        out = io.StringIO()
        csv.writer(out, delimiter=delimiter).writerows(rows)
        content = out.getvalue()
    else:
        content = "\n".join(text.splitlines()[:items])
    return SimpleUploadedFile(path.name, content.encode())


def ingest(bundle, upload, **fields):
    """Create a document through the service and run its ingestion task directly (in-process)."""
    from django.test import TestCase

    from knowledge.models import Document
    from knowledge.services import document_create

    with TestCase.captureOnCommitCallbacks(execute=True):  # the task runs after the "request"
        with as_tenant(bundle):  # the upload, as the tenant's request makes it
            result = document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=upload, **fields)
    with as_tenant(bundle):
        return Document.objects.get(pk=result.document.pk)


# --- Files the core suite builds itself (no ../shared needed) -----------------------------


def build_pdf(pages: list[str]) -> bytes:
    """A small valid PDF with one text line block per page (Helvetica, WinAnsi)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    page_ids = []
    pages_id_placeholder = len(objects) + 1 + 2 * len(pages)
    for text in pages:
        lines = [line for line in text.split("\n")]
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        for line in lines:
            safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({safe}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_ids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
                b"/Contents %d 0 R >>" % (pages_id_placeholder, font, content)
            )
        )
    kids = b" ".join(b"%d 0 R" % p for p in page_ids)
    pages_id = add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids)))
    assert pages_id == pages_id_placeholder
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref))
    return out.getvalue()


def build_docx(
    *, heading: str, paragraphs: list[str], table: list[list[str]] | None = None, header: str = "", subheading: str = ""
) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    if subheading:
        document.add_heading(subheading, level=2)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    if header:
        document.sections[0].header.paragraphs[0].text = header
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


SAMPLE_FAQ_CSV = (
    "question,answer,category,product\n"
    'How do I reset my password?,"Open Settings, choose Security and press Reset password. '
    'A link arrives by email.",account,web\n'
    "Can I change my delivery address?,You can change the address until the parcel is dispatched.,shipping,store\n"
    'What payment methods do you accept?,"We accept Visa, Mastercard, PayPal and bank transfer.",billing,store\n'
)

SAMPLE_CHAT_JSONL = "\n".join(
    json.dumps(c)
    for c in [
        {
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "My router keeps dropping the wifi connection."},
                {"role": "assistant", "content": "Please update the firmware from the admin page and restart it."},
                {"role": "user", "content": "Thanks, that fixed it."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "How long does a refund take?"},
                {"role": "assistant", "content": "Refunds reach your card within 5 business days."},
            ]
        },
    ]
)

LONG_TEXT = "\n\n".join(
    f"Section {i}. "
    + " ".join(
        f"Sentence {i}.{j} explains how the support team handles case number {i * 100 + j} with care."
        for j in range(12)
    )
    for i in range(40)
)


@pytest.fixture
def worker_env():
    """Environment for a real Celery worker process attached to the test database."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings
    from django.db import connection

    def on_test_database(url: str) -> str:
        return urlunsplit(urlsplit(url)._replace(path="/" + connection.settings_dict["NAME"]))

    return {
        **os.environ,
        "DATABASE_URL": on_test_database(settings.DATABASE_URL),
        "DATABASE_OWNER_URL": on_test_database(settings.DATABASE_OWNER_URL),
        "DATABASE_MAINTENANCE_URL": on_test_database(settings.DATABASE_MAINTENANCE_URL),
        "REDIS_URL": settings.REDIS_URL,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "CHATBOT_KEEP_EMBEDDED": "1",
        "PYTHONUNBUFFERED": "1",
    }


def insert_vectors(chatbot, vectors, *, texts=None, title: str = "vectors", space=None) -> tuple[int, list[int]]:
    """A ready document whose chunks carry these vectors (rows) in ``space`` (default: the
    chatbot's active space, its HNSW index ensured) without running the model, written as the
    chatbot's tenant in one statement. Chunk ``i`` has text ``texts[i]`` (default "vector chunk
    i") and metadata ``{"parity": i % 2}``. Returns the document id and the chunk ids in order."""
    from django.db import connection

    from knowledge.models import Document
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import ensure_space_index

    texts = texts if texts is not None else [f"vector chunk {i + 1}" for i in range(len(vectors))]
    with as_tenant(chatbot.tenant_id):
        if space is None:
            space = chatbot_space_ensure_active(chatbot=chatbot).space
            ensure_space_index(space)
        document = Document.objects.create(
            tenant_id=chatbot.tenant_id, chatbot=chatbot, title=title, status="ready",
            content_hash=f"{title}-{chatbot.pk}-{len(vectors)}", original_filename=f"{title}.txt",
        )  # fmt: skip
        literals = ["[" + ",".join(f"{x:.6f}" for x in v) + "]" for v in vectors]
        with connection.cursor() as cursor:
            cursor.execute(
                """
                WITH c AS (
                    INSERT INTO knowledge_chunk (tenant_id, chatbot_id, document_id, position, text, token_count,
                        kind, metadata, heading_path, content_hash, created_at)
                    SELECT %(tenant)s, %(chatbot)s, %(document)s, g, (%(texts)s::text[])[g], 8, 'text',
                        jsonb_build_object('parity', g %% 2), '[]'::jsonb, md5(%(document)s || '-' || g), now()
                    FROM generate_series(1, %(count)s) g
                    RETURNING id, position
                )
                INSERT INTO knowledge_chunkembedding (tenant_id, chatbot_id, chunk_id, space_id, embedding, created_at)
                SELECT %(tenant)s, %(chatbot)s, c.id, %(space)s, (%(vectors)s::text[])[c.position]::vector, now()
                FROM c
                """,
                {"tenant": chatbot.tenant_id, "chatbot": chatbot.pk, "document": document.pk, "count": len(texts),
                 "space": space.pk, "vectors": literals, "texts": list(texts)},
            )  # fmt: skip
            cursor.execute("SELECT id FROM knowledge_chunk WHERE document_id = %s ORDER BY position", [document.pk])
            ids = [row[0] for row in cursor.fetchall()]
    return document.pk, ids
