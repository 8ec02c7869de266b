"""Uploads, reprocessing and deleting documents."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from knowledge.models import (
    Document,
    IngestionJob,
)
from knowledge.services.jobs import Status, job_create
from tenants import inputs
from tenants.audit import audit_record
from tenants.errors import (
    Conflict,
    DomainError,
    NotFound,
    UploadRejected,
    UploadTooLarge,
)
from tenants.models import Chatbot, Tenant
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadResult:
    document: Document
    job: IngestionJob | None
    duplicate: bool


def _hash_upload(upload: UploadedFile) -> str:
    digest = hashlib.sha256()
    for part in upload.chunks():
        digest.update(part)
    upload.seek(0)
    return digest.hexdigest()


def _clean_filename(name: str) -> str:
    base = os.path.basename((name or "").replace("\\", "/")).strip().replace("\x00", "")
    return base[:200] or "upload"


def ensure_upload_allowed(upload: UploadedFile) -> None:
    if upload.size > settings.UPLOAD_MAX_BYTES:
        limit = settings.UPLOAD_MAX_BYTES // (1024 * 1024)
        raise UploadTooLarge(f"{upload.name}: the file is larger than the {limit} MB upload limit.", field="file")
    if upload.size == 0:
        raise UploadRejected(f"{upload.name}: the file is empty.", field="file")


def document_create(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    upload: UploadedFile,
    content_type: str = Document.ContentType.DOCUMENT,
    title: str = "",
    category: str = "",
    metadata: dict | None = None,
    source_user_id: str = "",
    replace: bool = False,
) -> UploadResult:
    """Store the file durably with a ``queued`` document and enqueue ingestion after commit.

    Identical content already in the chatbot is not stored twice; ``replace`` with the title of an
    existing document swaps that document's chunks for the new ones once the new ones are ready.
    """
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    ensure_upload_allowed(upload)
    if content_type not in Document.ContentType.values:
        raise DomainError(
            f"content_type must be one of: {', '.join(Document.ContentType.values)}.", field="content_type"
        )
    title = inputs.text(title, field="title", max_length=300)
    category = inputs.text(category, field="category", max_length=200)
    source_user_id = inputs.text(str(source_user_id or ""), field="user_id", max_length=200)
    metadata = inputs.json_value(metadata or {}, field="metadata")
    if not isinstance(metadata, dict):
        raise DomainError('metadata must be a JSON object, e.g. {"product": "router"}.', field="metadata")
    filename = _clean_filename(upload.name)
    title = (title or filename).strip()[:300]
    digest = _hash_upload(upload)
    document = None
    try:
        with transaction.atomic():
            documents = Document.objects.for_tenant(tenant).filter(chatbot=chatbot)
            existing = documents.filter(content_hash=digest).first()
            if existing is not None:
                return UploadResult(document=existing, job=existing.jobs.order_by("-id").first(), duplicate=True)
            replaces = None
            if replace:
                replaces = documents.filter(title=title, replaced_by__isnull=True).order_by("-created_at").first()
            document = Document(
                tenant=tenant,
                chatbot=chatbot,
                title=title,
                content_type=content_type,
                category=category[:200],
                metadata=metadata or {},
                source_user_id=str(source_user_id or "")[:200],
                original_filename=filename,
                size_bytes=upload.size,
                content_hash=digest,
                replaces=replaces,
            )
            upload.name = f"{uuid.uuid4().hex}/{filename}"
            document.file = upload  # stored durably before the row commits
            document.save()
            job = job_create(document)
    except Exception as exc:
        if document is not None and document.file.name:
            document.file.storage.delete(document.file.name)  # no orphan file for a row that never was
        if isinstance(exc, IntegrityError):  # the same file uploaded twice at the same moment
            existing = Document.objects.for_tenant(tenant).filter(chatbot=chatbot, content_hash=digest).first()
            if existing is not None:
                return UploadResult(document=existing, job=existing.jobs.order_by("-id").first(), duplicate=True)
        raise
    audit_record(
        action="upload",
        tenant_id=tenant.pk,
        target=f"document:{document.pk}",
        filename=document.original_filename,
        size_bytes=document.size_bytes,
        chatbot_id=chatbot.pk,
    )
    return UploadResult(document=document, job=job, duplicate=False)


def document_reprocess(*, tenant: Tenant, document: Document) -> IngestionJob:
    with transaction.atomic():
        document = Document.objects.for_tenant(tenant).select_for_update().get(pk=document.pk)
        if document.jobs.filter(status__in=[Status.QUEUED, Status.PROCESSING]).exists():
            raise Conflict("The document is already being processed; wait for it to finish.")
        document.status = Status.QUEUED
        document.error = ""
        document.save(update_fields=["status", "error", "updated_at"])
        return job_create(document)


def document_delete(*, tenant: Tenant, document: Document) -> None:
    """Remove the document with its chunks, vectors and conversations, and then its file."""
    with transaction.atomic():
        document = Document.objects.for_tenant(tenant).filter(pk=document.pk).first()
        if document is None:
            return
        file_name, storage = document.file.name, document.file.storage
        chatbot_id = document.chatbot_id
        audit_record(action="document_delete", tenant_id=tenant.pk, target=f"document:{document.pk}",
                     title=document.title, filename=document.original_filename, chatbot_id=chatbot_id)  # fmt: skip
        document.delete()
        chatbot_content_changed(chatbot_id=chatbot_id)
        transaction.on_commit(lambda: storage.delete(file_name))
