"""Ingestion on files the tests build themselves (runs in a fresh clone without ../shared).
Celery is eager here: the ingestion task function runs in the test process."""

import json

import pytest

from knowledge.models import Chunk, ChunkEmbedding, Conversation, ConversationTurn, Document, IngestionJob, QAPair
from tests.conftest import (
    LONG_TEXT,
    SAMPLE_CHAT_JSONL,
    SAMPLE_FAQ_CSV,
    as_tenant,
    build_docx,
    build_pdf,
    ingest,
    make_upload,
)

pytestmark = pytest.mark.django_db


def test_pdf_pages_are_recorded_per_chunk(bundle):
    pdf = build_pdf(
        [
            "Shipping policy\nOrders leave our warehouse within two business days.\nTracking numbers arrive by email.",
            "Returns policy\nYou can return any item within 30 days for a full refund.",
            "",
        ]
    )
    document = ingest(bundle, make_upload("policies.pdf", pdf), content_type="policy")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        assert document.page_count == 3
        chunks = list(document.chunks.order_by("position"))
        assert len(chunks) == 1  # short pages pack into one chunk spanning them
        assert (chunks[0].page, chunks[0].page_end) == (1, 2)
        assert "30 days" in chunks[0].text
        assert "33% of pages had no text." in document.quality["warnings"]
        assert document.language == "en"
        assert ChunkEmbedding.objects.filter(chunk__document=document).count() == 1


def test_long_text_is_chunked_within_the_token_budget_with_overlap(bundle):
    document = ingest(bundle, make_upload("handbook.txt", LONG_TEXT))
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        chunks = list(document.chunks.order_by("position"))
        assert len(chunks) > 20
        assert all(c.token_count <= 254 for c in chunks)
        # Sentences are kept whole: every chunk ends at a sentence end.
        assert all(c.text.rstrip().endswith(".") for c in chunks)
        # Overlap: each chunk begins with the last sentence of the one before, when they share a section.
        shared = sum(1 for a, b in zip(chunks, chunks[1:]) if a.text.split(". ")[-1].rstrip(".") in b.text)
        assert shared >= len(chunks) // 2
        assert [c.position for c in chunks] == list(range(len(chunks)))
        job = document.jobs.get()
        assert (job.status, job.progress, job.chunks_done, job.chunks_total) == ("ready", 100, len(chunks), len(chunks))


def test_chunk_size_follows_the_chatbot_settings(bundle):
    bundle.chatbot.chunk_size, bundle.chatbot.chunk_overlap = 64, 8
    with as_tenant(bundle):
        bundle.chatbot.save()
    document = ingest(bundle, make_upload("handbook.txt", LONG_TEXT))
    with as_tenant(bundle):
        assert max(document.chunks.values_list("token_count", flat=True)) <= 64
        assert document.chunks.count() > 80


def test_docx_headings_tables_and_headers(bundle):
    data = build_docx(
        heading="Billing",
        subheading="Refunds",
        header="ACME Support Handbook",
        paragraphs=["Refunds are paid to the original card within five days."],
        table=[["Plan", "Price"], ["Basic", "10 EUR"], ["Pro", "25 EUR"]],
    )
    document = ingest(bundle, make_upload("handbook.docx", data))
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        texts = {c.kind: c for c in document.chunks.all()}
        assert texts["text"].heading_path == ["Billing", "Refunds"]
        assert texts["table"].text == "Plan: Basic; Price: 10 EUR\nPlan: Pro; Price: 25 EUR"
        assert texts["header"].text == "ACME Support Handbook"


def test_faq_csv_gives_one_chunk_per_row_with_other_columns_as_metadata(bundle):
    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq", category="help")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        assert document.detected_type == "csv-faq"
        chunks = list(document.chunks.order_by("position"))
        assert [c.metadata for c in chunks] == [
            {"category": "account", "product": "web", "row": 2},
            {"category": "shipping", "product": "store", "row": 3},
            {"category": "billing", "product": "store", "row": 4},
        ]
        assert chunks[0].text.startswith("Q: How do I reset my password?\nA: Open Settings")


def test_semicolon_latin1_csv_is_detected(bundle):
    text = "Frage;Antwort\nWie ändere ich mein Passwort?;Über die Einstellungen unter Sicherheit.\n"
    document = ingest(bundle, make_upload("faq.txt", text.encode("latin-1")), content_type="faq")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        # 'Frage' is not a known question column: the rows are read with their header
        assert (
            document.chunks.get().text
            == "Frage: Wie ändere ich mein Passwort?; Antwort: Über die Einstellungen unter Sicherheit."
        )


def test_chat_log_becomes_conversations_and_qa_pairs(bundle):
    document = ingest(bundle, make_upload("chats.jsonl", SAMPLE_CHAT_JSONL), content_type="conversation")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        assert Conversation.objects.filter(document=document).count() == 2
        turns = list(
            ConversationTurn.objects.filter(conversation__document=document, conversation__position=0)
            .order_by("position")
            .values_list("role", flat=True)
        )
        assert turns == ["system", "user", "assistant", "user"]
        pairs = list(
            QAPair.objects.filter(conversation__document=document)
            .order_by("conversation__position")
            .values_list("question", "answer")
        )
        assert pairs == [
            (
                "My router keeps dropping the wifi connection.",
                "Please update the firmware from the admin page and restart it.",
            ),
            ("How long does a refund take?", "Refunds reach your card within 5 business days."),
        ]
        assert document.chunks.filter(kind="qa").count() == 2


def test_sharegpt_and_plain_transcripts(bundle):
    sharegpt = json.dumps(
        [
            {
                "id": "c1",
                "conversations": [
                    {"from": "human", "value": "Is there a student discount?"},
                    {"from": "gpt", "value": "Yes, 20% with a valid student card."},
                ],
            }
        ]
    )
    transcript = "Customer: My order arrived broken.\nAgent: Sorry! I have sent a replacement today.\n"
    a = ingest(bundle, make_upload("export.json", sharegpt))
    b = ingest(bundle, make_upload("chat.txt", transcript))
    with as_tenant(bundle):
        assert (a.detected_type, b.detected_type) == ("chat-json", "transcript")
        assert QAPair.objects.get(conversation__document=a).answer == "Yes, 20% with a valid student card."
        assert QAPair.objects.get(conversation__document=b).question == "My order arrived broken."


def test_json_records_and_markdown_headings(bundle):
    records = json.dumps([{"id": 7, "title": "Warranty", "text": "Every device has a two year warranty.", "sku": "X1"}])
    document = ingest(bundle, make_upload("products.json", records), content_type="product")
    with as_tenant(bundle):
        chunk = document.chunks.get()
    assert chunk.text == "Warranty\n\nEvery device has a two year warranty."
    assert chunk.metadata == {"id": 7, "sku": "X1", "record": 0}
    md = "# Setup\n\n## Wifi\n\nHold the button for five seconds to pair the device.\n"
    document = ingest(bundle, make_upload("guide.md", md))
    with as_tenant(bundle):
        assert document.chunks.get().heading_path == ["Setup", "Wifi"]


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.txt", b"", "The file is empty."),
        ("blank.txt", b"   \n\n  ", "The file is empty."),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "The PDF is corrupt"),
        ("scan.pdf", None, "No extractable text (scanned PDF; OCR is not supported)."),
        ("doc.docx", b"\x00\x01\x02\x03" * 100, "The file is named .docx but is not a Word document"),
        ("archive.zip", None, "ZIP archives are not supported"),
        ("program.exe", b"MZ\x90\x00" + b"\x00" * 200, "Unsupported file type: this is a Windows executable."),
        ("bad.json", b'{"question": "x", ', "The JSON is malformed"),
        ("only-dots.txt", b"....\n\n----\n\n1 2 3", "No usable text"),
    ],
)
def test_bad_files_fail_with_a_readable_reason(bundle, name, content, reason):
    import io
    import zipfile

    if name == "scan.pdf":
        content = build_pdf(["", ""])
    if name == "archive.zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("inner.pdf", build_pdf(["hello there general kenobi"]))
        content = buffer.getvalue()
    good = ingest(bundle, make_upload("good.txt", "Our support line is open from nine to five on weekdays."))
    if not content:
        from knowledge.services import document_create
        from tenants.errors import UploadRejected

        with pytest.raises(UploadRejected, match="the file is empty"), as_tenant(bundle):
            document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload(name, content))
        return
    document = ingest(bundle, make_upload(name, content))
    assert document.status == "failed"
    assert reason in document.error
    with as_tenant(bundle):
        assert document.chunks.count() == 0
        job = document.jobs.get()
        assert (job.status, job.error) == ("failed", document.error)
        good.refresh_from_db()
        assert good.status == "ready" and good.chunks.count() == 1


def test_blank_text_upload_fails_in_the_job(bundle):
    document = ingest(bundle, make_upload("blank.txt", b"   \n\n  "))
    with as_tenant(bundle):
        assert (document.status, document.error) == ("failed", "The file is empty.")


def test_same_content_is_not_stored_twice(bundle):
    from knowledge.services import document_create

    first = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    with as_tenant(bundle):
        again = document_create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("copy.csv", SAMPLE_FAQ_CSV)
        )
        assert again.duplicate and again.document.pk == first.pk
        assert Document.objects.count() == 1 and Chunk.objects.count() == 3


def test_replace_swaps_chunks_of_the_same_title_only_when_ready(bundle):
    old = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), title="Store FAQ")
    with as_tenant(bundle):
        version_before = type(bundle.chatbot).objects.get(pk=bundle.chatbot.pk).content_version
    updated = (
        SAMPLE_FAQ_CSV.replace("5 business days", "3 days")
        + "Do you ship abroad?,Yes to 30 countries.,shipping,store\n"
    )
    new = ingest(bundle, make_upload("faq-v2.csv", updated), title="Store FAQ", replace=True)
    with as_tenant(bundle):
        assert new.status == "ready"
        assert not Document.objects.filter(pk=old.pk).exists()
        assert list(Chunk.objects.values_list("document_id", flat=True).distinct()) == [new.pk]
        assert new.chunks.count() == 4
        assert type(bundle.chatbot).objects.get(pk=bundle.chatbot.pk).content_version > version_before


def test_failed_replacement_keeps_the_old_document(bundle):
    old = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), title="Store FAQ")
    new = ingest(bundle, make_upload("faq.pdf", b"%PDF-1.4 garbage"), title="Store FAQ", replace=True)
    with as_tenant(bundle):
        assert new.status == "failed"
        assert Document.objects.get(pk=old.pk).chunks.count() == 3


def test_duplicate_chunks_are_flagged(bundle):
    ingest(bundle, make_upload("a.txt", "Our office is closed on public holidays in Germany."))
    second = ingest(
        bundle,
        make_upload(
            "b.txt",
            "Our office is closed on public holidays in Germany!\n\n"
            "Parking is free for visitors at the north entrance.",
        ),
    )
    third = ingest(bundle, make_upload("c.txt", "our office is   closed on public holidays in germany."))
    with as_tenant(bundle):
        assert third.chunks.get().duplicate_of_id is not None
        assert third.quality["exact_duplicates"] == 1
        assert second.quality["exact_duplicates"] == 0


def test_near_duplicates_are_flagged_by_embedding(bundle):
    """Vectors are made with each chunk's context (here the document's title): the same title, a
    nearly identical text."""
    text = "Refunds are paid back to the original card within {} business days."
    ingest(bundle, make_upload("a.txt", text.format("five")), title="Refunds")
    second = ingest(bundle, make_upload("b.txt", text.format("5")), title="Refunds")
    with as_tenant(bundle):
        chunk = second.chunks.get()
        assert chunk.duplicate_of_id is None and chunk.near_duplicate_of_id is not None
        assert "1 chunks are near-duplicates of existing chunks." in second.quality["warnings"]


def test_rerun_after_a_crash_keeps_exactly_one_copy_of_each_chunk(bundle, monkeypatch):
    """A worker dying mid-embedding: rows written so far stay, the rerun only adds what is missing."""
    import sys

    from django.test import TestCase

    from knowledge.embeddings import provider_for_space as real
    from knowledge.services import document_create, ingestion_job_run

    calls = {"n": 0}
    ingestion = sys.modules[ingestion_job_run.__module__]  # where the job looks its provider up

    class Dying:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def embed(self, texts):
            calls["n"] += 1
            if calls["n"] == 3:
                raise SystemExit("worker killed")
            return self.inner.embed(texts)

    monkeypatch.setattr(ingestion, "provider_for_space", lambda space: Dying(real(space)))
    monkeypatch.setattr("django.conf.settings.EMBEDDING_BATCH_SIZE", 8)
    with TestCase.captureOnCommitCallbacks(execute=False), as_tenant(bundle):
        result = document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("h.txt", LONG_TEXT))
    job = result.job
    with pytest.raises(SystemExit), as_tenant(bundle):  # the task's scope, as ingestion_job_run_task enters it
        ingestion_job_run(job_id=job.pk, lease_token="task-1")
    with as_tenant(bundle):
        job.refresh_from_db()
        assert job.status == "processing" and job.chunks_done == 16
        embedded_before = ChunkEmbedding.objects.filter(chunk__document=result.document).count()
        assert embedded_before == 16
        # The broker redelivers the same message (same task id) to a new worker.
        assert ingestion_job_run(job_id=job.pk, lease_token="task-1") == "ready"
        document = Document.objects.get(pk=result.document.pk)
        positions = list(document.chunks.order_by("position").values_list("position", flat=True))
        assert positions == list(range(document.chunk_count))
        assert ChunkEmbedding.objects.filter(chunk__document=document).count() == document.chunk_count
        job.refresh_from_db()
        assert (job.attempts, job.interruptions) == (2, 1)


def test_a_live_job_is_not_taken_over_by_another_message(bundle):
    from django.test import TestCase

    from knowledge.services import document_create, ingestion_job_run

    with TestCase.captureOnCommitCallbacks(execute=False), as_tenant(bundle):
        result = document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("a.txt", LONG_TEXT))
        IngestionJob.objects.filter(pk=result.job.pk).update(
            status="processing",
            lease_token="other-worker",
            heartbeat_at=__import__("django.utils.timezone").utils.timezone.now(),
        )
        assert ingestion_job_run(job_id=result.job.pk, lease_token="duplicate-message") == "skipped"


def test_reprocess_and_delete(bundle):
    from django.test import TestCase

    from knowledge.services import document_delete, document_reprocess

    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    with as_tenant(bundle):
        chunk_ids = set(document.chunks.values_list("id", flat=True))
    with TestCase.captureOnCommitCallbacks(execute=True):
        with as_tenant(bundle):  # as the reprocess request
            job = document_reprocess(tenant=bundle.tenant, document=document)
    with as_tenant(bundle):
        job.refresh_from_db()
        document.refresh_from_db()
        assert (job.status, document.status) == ("ready", "ready")
        assert set(document.chunks.values_list("id", flat=True)) == chunk_ids  # same chunking: rows kept
        assert document.jobs.count() == 2
    file_name = document.file.name
    assert document.file.storage.exists(file_name)
    with TestCase.captureOnCommitCallbacks(execute=True):
        with as_tenant(bundle):  # as the delete request
            document_delete(tenant=bundle.tenant, document=document)
    with as_tenant(bundle):
        assert not Chunk.objects.exists() and not ChunkEmbedding.objects.exists()
    assert not document.file.storage.exists(file_name)


def test_two_embedding_spaces_each_with_their_own_hnsw_index(bundle):
    from django.db import connection

    from knowledge.models import ChatbotSpace
    from knowledge.services import chatbot_space_add, embedding_space_get_or_create
    from knowledge.vectors import space_index_name

    with as_tenant(bundle):
        active = embedding_space_get_or_create(model_key="local:all-MiniLM-L6-v2")
        candidate = embedding_space_get_or_create(model_key="local:all-MiniLM-L6-v2", version="2")
        chatbot_space_add(chatbot=bundle.chatbot, model_key="local:all-MiniLM-L6-v2", version="2")
    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    with as_tenant(bundle):
        assert ChatbotSpace.objects.get(chatbot=bundle.chatbot, role="active").space == active
        for space in (active, candidate):
            assert ChunkEmbedding.objects.filter(chunk__document=document, space=space).count() == 3
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'knowledge_chunkembedding'")
        indexes = dict(cursor.fetchall())
    for space in (active, candidate):
        definition = indexes[space_index_name(space)]
        assert "hnsw" in definition and "vector_cosine_ops" in definition
        assert f"space_id = {space.pk}" in definition
    # The planner serves a space's nearest-neighbour query from that space's index. (On a table
    # this small a scan of the tenant index and a sort cost less, so both are ruled out here.)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        probe = "[" + ",".join(["0.05"] * 384) + "]"
        cursor.execute(
            "EXPLAIN SELECT id FROM knowledge_chunkembedding WHERE space_id = %s "
            "ORDER BY (embedding::vector(384)) <=> %s::vector(384) LIMIT 5",
            [candidate.pk, probe],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert space_index_name(candidate) in plan


def test_search_vector_is_stored_for_keyword_search(bundle):
    from django.contrib.postgres.search import SearchQuery

    document = ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    with as_tenant(bundle):
        hits = document.chunks.filter(search_vector=SearchQuery("payment methods", config="english"))
        assert [c.position for c in hits] == [2]


def test_a_space_is_backfilled_then_activated_in_one_step(api, bundle, other_bundle):
    """A tenant's own space added after its content: activating it is refused while vectors are
    missing (a conflict naming how many), the lease-free backfill embeds exactly those, then the
    activation swaps the roles in one transaction (the old vectors are kept), bumps the content
    version, and search (the API, as a chatbot calls it) serves the new space."""
    from knowledge.models import ChatbotSpace, EmbeddingSpace
    from knowledge.services import chatbot_space_activate, chatbot_space_add, chunk_embeddings_backfill
    from search.models import SearchLog
    from tenants.errors import Conflict
    from tenants.models import Chatbot

    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    with as_tenant(bundle):
        before = ChatbotSpace.objects.get(chatbot=bundle.chatbot, role="active")
        link = chatbot_space_add(
            chatbot=bundle.chatbot, model_key="local:all-MiniLM-L6-v2", version="ft-1", tenant_owned=True
        )
        space = link.space
        assert space.tenant_id == bundle.tenant.pk and link.role == "building"
        with pytest.raises(Conflict, match="3 chunks have no vector"):
            chatbot_space_activate(chatbot=bundle.chatbot, space=space)
        version = Chatbot.objects.get(pk=bundle.chatbot.pk).content_version
        assert chunk_embeddings_backfill(chatbot=bundle.chatbot, space=space) == 3
        assert chunk_embeddings_backfill(chatbot=bundle.chatbot, space=space) == 0  # nothing left to do
        chatbot_space_activate(chatbot=bundle.chatbot, space=space)
        roles = dict(ChatbotSpace.objects.filter(chatbot=bundle.chatbot).values_list("space_id", "role"))
        assert roles == {before.space_id: "retired", space.pk: "active"}
        assert Chatbot.objects.get(pk=bundle.chatbot.pk).content_version == version + 1
        assert ChunkEmbedding.objects.filter(space=before.space).count() == 3  # kept for a rollback
    response = api.post("/api/search", {"query": "How can I pay?", "chatbot_id": bundle.chatbot.pk}, format="json")
    assert response.status_code == 200 and response.json()["results"]
    with as_tenant(bundle):
        assert SearchLog.objects.latest("created_at").embedding_space == space.key
    with as_tenant(other_bundle):  # the space is its tenant's own
        assert not EmbeddingSpace.objects.filter(pk=space.pk).exists()
