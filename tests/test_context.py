"""Chunks are embedded with their context: the FAQ question for every chunk of a long answer (and
for Q&A pairs of chat logs), the document's title and headings for document text; searches return
the context beside the chunk's own text. Chunks stored before contexts existed are re-embedded in
place by the refresh. Ingestion runs eagerly in-process; the real local model embeds."""

import json

import numpy as np
import pytest
from rest_framework.test import APIClient

from knowledge.chunking import embedding_text, input_hash
from knowledge.models import Chunk, ChunkEmbedding
from tests.conftest import as_tenant, build_docx, ingest, make_upload

LONG_ANSWER = " ".join(
    f"Step {i}: the courier scans parcel labels at depot {i} and updates the tracking page within an hour."
    for i in range(40)
)


def _vector(text: str) -> np.ndarray:
    from knowledge.embeddings import provider_for

    return np.asarray(provider_for("local:all-MiniLM-L6-v2").embed([text, text + " "])[0])


def _assert_embedded_as(stored, expected: str, bare: str) -> None:
    """``stored`` is the vector of ``expected`` (the chunk with its context), not of ``bare`` (its
    text alone). Documents are encoded by the int8 graph, whose activation scales are taken per
    batch: the same text in another batch is within cosine ~0.997, not bit for bit."""
    stored = np.asarray(stored)
    agreement = float(np.dot(stored, _vector(expected)))
    assert agreement > 0.99
    if bare != expected:
        assert agreement > float(np.dot(stored, _vector(bare)))


def test_every_chunk_of_a_long_faq_answer_is_embedded_with_its_question(bundle, api):
    rows = [{"question": "How can I follow my delivery?", "answer": LONG_ANSWER},
            {"question": "What payment methods do you take?", "answer": "Cards and bank transfer."}]  # fmt: skip
    document = ingest(bundle, make_upload("faq.json", json.dumps(rows)), content_type="faq")
    with as_tenant(bundle):
        chunks = list(document.chunks.filter(kind="faq").order_by("position"))
        vectors = {e.chunk_id: e for e in ChunkEmbedding.objects.filter(chunk__document=document)}
    answer = [c for c in chunks if c.metadata["record"] == 0]
    assert len(answer) >= 3 and {c.context for c in answer} == {"Q: How can I follow my delivery?"}
    assert answer[0].text.startswith("Q: How can I follow my delivery?\nA: Step 0")
    assert not answer[-1].text.startswith("Q:")  # the chunk's own text stays as it is
    for chunk in answer:
        assert chunk.token_count + 10 <= 254  # room for the question in what the model reads
        vector = vectors[chunk.pk]
        expected = embedding_text(chunk.text, chunk.context)
        assert vector.input_hash == input_hash(expected)
        _assert_embedded_as(vector.embedding, expected, chunk.text)
    assert embedding_text(answer[-1].text, answer[-1].context) == f"Q: How can I follow my delivery?\n{answer[-1].text}"
    # a later part of the answer is found by the question it answers, and comes back with it
    found = api.post(
        "/api/search",
        {"query": "where is my parcel, can I track it?", "chatbot_id": bundle.chatbot.pk, "max_results": 10},
        format="json",
    ).json()["results"]
    hits = [r for r in found if r["metadata"].get("record") == 0]
    assert len(hits) >= 2 and all(r["context"] == "Q: How can I follow my delivery?" for r in hits)
    assert any(not r["content"].startswith("Q:") for r in hits)


def test_document_text_is_embedded_with_its_title_and_headings(bundle, api):
    data = build_docx(heading="Returns", subheading="Damaged items", paragraphs=["Send a photo within 14 days."])
    ingest(bundle, make_upload("handbook.docx", data), title="Support handbook")
    result = api.post(
        "/api/search", {"query": "photo of a broken product", "chatbot_id": bundle.chatbot.pk}, format="json"
    ).json()["results"][0]
    assert result["content"] == "Send a photo within 14 days."
    assert result["context"] == "Support handbook › Returns › Damaged items"
    plain = ingest(bundle, make_upload("opening_hours.txt", "We open at nine on weekdays."))
    with as_tenant(bundle):
        assert plain.chunks.get().context == "opening hours"  # a title that is the file name loses its extension


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the refresh finds chatbots there
def test_chunks_stored_before_contexts_are_re_embedded_in_place(bundle):
    """As after upgrading: chunks without a worked-out context and vectors of their bare text. The
    refresh (the command `make run` queues and beat runs) gives each its context and a new vector,
    in place; a second run has nothing to do."""
    from django.core.management import call_command

    rows = [{"question": "How can I follow my delivery?", "answer": LONG_ANSWER}]
    document = ingest(bundle, make_upload("faq.json", json.dumps(rows)), content_type="faq")
    with as_tenant(bundle):
        chunks = list(document.chunks.order_by("position"))
        for chunk in chunks:  # the old state: no context, the vector of the text alone, input unknown
            ChunkEmbedding.objects.filter(chunk=chunk).update(embedding=_vector(chunk.text).tolist(), input_hash="")
        Chunk.objects.filter(document=document).update(context=None)
        ids = {e.chunk_id: e.pk for e in ChunkEmbedding.objects.filter(chunk__document=document)}
    out = __import__("io").StringIO()
    call_command("reembed_chunks", stdout=out)
    assert json.loads(out.getvalue()) == {"chatbots": 1, "contexts": len(chunks), "embeddings": len(chunks)}
    with as_tenant(bundle):
        for chunk in Chunk.objects.filter(document=document).order_by("position"):
            assert chunk.context == "Q: How can I follow my delivery?"
            vector = ChunkEmbedding.objects.get(chunk=chunk)
            assert vector.pk == ids[chunk.pk]  # updated in place
            expected = embedding_text(chunk.text, chunk.context)
            assert vector.input_hash == input_hash(expected)
            _assert_embedded_as(vector.embedding, expected, chunk.text)
    call_command("reembed_chunks", stdout=(out := __import__("io").StringIO()))
    assert json.loads(out.getvalue()) == {"chatbots": 0, "contexts": 0, "embeddings": 0}


def test_a_changed_context_is_re_embedded_when_the_document_is_reprocessed(bundle, run_jobs):
    from knowledge.models import Document

    document = ingest(bundle, make_upload("notes.txt", "We open at nine on weekdays."), title="Shop hours")
    with as_tenant(bundle):
        before = ChunkEmbedding.objects.get(chunk__document=document)
        Document.objects.filter(pk=document.pk).update(title="Warehouse hours")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    with run_jobs():
        assert api.post(f"/api/documents/{document.pk}/reprocess").status_code == 202
    with as_tenant(bundle):
        chunk = Chunk.objects.get(document=document)
        after = ChunkEmbedding.objects.get(chunk=chunk)
    assert chunk.context == "Warehouse hours" and after.input_hash != before.input_hash
    assert after.input_hash == input_hash("Warehouse hours\nWe open at nine on weekdays.")
