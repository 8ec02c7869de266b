"""Every read of the knowledge app, always through the tenant."""

from __future__ import annotations

from django.db.models import Count, QuerySet, Sum

from knowledge.models import Chunk, Document, IngestionJob
from tenants.errors import NotFound
from tenants.models import ApiKey, Chatbot, Tenant


def document_list(*, tenant: Tenant, chatbot: Chatbot, status: str | None = None) -> list[Document]:
    """The chatbot's documents, newest first, each with ``latest_job`` (two queries in all)."""
    documents = Document.objects.for_tenant(tenant).filter(chatbot=chatbot).order_by("-created_at", "-id")
    if status:
        documents = documents.filter(status=status)
    documents = list(documents)
    latest = {
        job.document_id: job
        for job in IngestionJob.objects.for_tenant(tenant)
        .filter(document__in=[d.pk for d in documents])
        .order_by("document_id", "-id")
        .distinct("document_id")
    }
    for document in documents:
        document.latest_job = latest.get(document.pk)
    return documents


def document_totals(*, tenant: Tenant, chatbot: Chatbot) -> dict:
    rows = (
        Document.objects.for_tenant(tenant)
        .filter(chatbot=chatbot)
        .values("status")
        .annotate(n=Count("id"), chunks=Sum("chunk_count"), size=Sum("size_bytes"))
    )
    totals = {"documents": 0, "chunks": 0, "bytes": 0, **{s: 0 for s in Document.Status.values}}
    for row in rows:
        totals[row["status"]] = row["n"]
        totals["documents"] += row["n"]
        totals["chunks"] += row["chunks"] or 0
        totals["bytes"] += row["size"] or 0
    return totals


def document_get(*, tenant: Tenant, document_id, api_key: ApiKey | None = None) -> Document:
    try:
        document_id = int(document_id)
    except (TypeError, ValueError):
        raise NotFound("Document not found.") from None
    documents = Document.objects.for_tenant(tenant).select_related("chatbot")
    if api_key is not None and api_key.chatbot_id is not None:
        documents = documents.filter(chatbot_id=api_key.chatbot_id)
    document = documents.filter(pk=document_id).first()
    if document is None:
        raise NotFound("Document not found.")
    return document


def document_latest_job(*, document: Document) -> IngestionJob | None:
    return document.jobs.order_by("-id").first()


def chunk_list(*, tenant: Tenant, document: Document) -> QuerySet[Chunk]:
    return Chunk.objects.for_tenant(tenant).filter(document=document).order_by("position")
