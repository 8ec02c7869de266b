"""Every write of the knowledge app: uploads, the ingestion state machine, reprocess, delete."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from knowledge import quality, vectors
from knowledge.chunking import ChunkDraft, embedding_text, input_hash
from knowledge.embeddings import EmbeddingProvider, ProviderError, ProviderUnavailable, provider_for
from knowledge.models import (
    ChatbotSpace,
    Chunk,
    ChunkEmbedding,
    Conversation,
    ConversationTurn,
    Document,
    EmbeddingSpace,
    IngestionJob,
    QAPair,
)
from knowledge.parsers import ParsedConversation, ParseError, parse_file
from knowledge.parsers.sandbox import Limits, sandbox_for
from knowledge.preparation import DOCUMENT_KINDS, ChunkingPlan, document_title_context, prepare
from tenants import inputs
from tenants.audit import audit_record
from tenants.errors import Conflict, DomainError, NotFound, UploadRejected, UploadTooLarge
from tenants.models import Chatbot, Tenant
from tenants.scoping import cross_tenant_context, scope_connection, tenant_context
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)

Status = Document.Status
Stage = IngestionJob.Stage
EMBED_PROGRESS_FROM, EMBED_PROGRESS_TO = 10, 95


class LeaseLost(Exception):
    """Another worker owns the job now, or the document was deleted: stop quietly."""


# --- Embedding spaces -------------------------------------------------------------------


def embedding_space_get_or_create(
    *, model_key: str, version: str = "1", tenant: Tenant | None = None
) -> EmbeddingSpace:
    """The space of a model version: a built-in one (no tenant; created, with its index, by the
    owner's ``app_global_space_ensure``: no tenant may write shared rows) or the tenant's own."""
    provider = provider_for(model_key)
    if tenant is None:
        space_id = vectors.global_space_ensure(
            provider=provider.provider, model_name=provider.model_name, version=version, dimensions=provider.dimensions
        )
        return EmbeddingSpace.objects.get(pk=space_id)
    with transaction.atomic():
        space, created = EmbeddingSpace.objects.get_or_create(
            tenant=tenant,
            provider=provider.provider,
            model_name=provider.model_name,
            version=version,
            defaults={"dimensions": provider.dimensions},
        )
        if created:
            vectors.ensure_space_index(space)
    return space


def chatbot_space_ensure_active(*, chatbot: Chatbot) -> ChatbotSpace:
    """The chatbot's active space, created from its embedding model setting on first use."""
    active = ChatbotSpace.objects.filter(chatbot=chatbot, role=ChatbotSpace.Role.ACTIVE).select_related("space")
    found = active.first()
    if found is not None:
        return found
    space = embedding_space_get_or_create(model_key=chatbot.embedding_model)
    try:
        with transaction.atomic():
            return ChatbotSpace.objects.create(
                tenant_id=chatbot.tenant_id, chatbot=chatbot, space=space, role=ChatbotSpace.Role.ACTIVE
            )
    except IntegrityError:  # created concurrently
        return active.get()


def chatbot_space_add(
    *,
    chatbot: Chatbot,
    model_key: str,
    version: str = "1",
    role: str = ChatbotSpace.Role.BUILDING,
    tenant_owned: bool = False,
) -> ChatbotSpace:
    """Hold a second space beside the active one (re-embedding, A/B candidates, a fine-tuned
    version): a built-in model version, or with ``tenant_owned`` the chatbot's tenant's own."""
    chatbot_space_ensure_active(chatbot=chatbot)
    space = embedding_space_get_or_create(
        model_key=model_key, version=version, tenant=chatbot.tenant if tenant_owned else None
    )
    link, _ = ChatbotSpace.objects.get_or_create(
        tenant_id=chatbot.tenant_id, chatbot=chatbot, space=space, defaults={"role": role}
    )
    return link


def chatbot_space_activate(*, chatbot: Chatbot, space: EmbeddingSpace) -> ChatbotSpace:
    """Serve ``space`` for the chatbot from now on, in one transaction: the active space retires
    (its vectors are kept), ``space`` becomes active, the content version is bumped (cached results
    stop being read) and the fast path hears of it (the table's trigger). ``space`` must be one the
    chatbot holds, with a current vector for every chunk of its ready documents
    (``chunk_embeddings_backfill``), so no search ever meets a half-built space."""
    with transaction.atomic():
        links = {link.space_id: link for link in ChatbotSpace.objects.select_for_update().filter(chatbot=chatbot)}
        target = links.get(space.pk)
        if target is None:
            raise NotFound("This chatbot holds no vectors in that embedding space.")
        if target.role == ChatbotSpace.Role.ACTIVE:
            return target
        missing = vectors.chunks_missing_count(space=space, chatbot_id=chatbot.pk)
        if missing:
            raise Conflict(
                f"{missing} chunks have no vector in this embedding space yet; re-embed them "
                "(chunk_embeddings_backfill) before activating it."
            )
        ChatbotSpace.objects.filter(chatbot=chatbot, role=ChatbotSpace.Role.ACTIVE).update(
            role=ChatbotSpace.Role.RETIRED
        )
        target.role = ChatbotSpace.Role.ACTIVE
        target.save(update_fields=["role"])
        chatbot_content_changed(chatbot_id=chatbot.pk)
    return target


def chunk_embeddings_backfill(*, chatbot: Chatbot, space: EmbeddingSpace, progress=None) -> int:
    """Embed every chunk of the chatbot's ready documents that lacks a current vector in
    ``space`` (a space being built, a changed context); no job lease, safe to run again or
    alongside ingestion (vectors are keyed by chunk and space). ``progress(n)`` after each batch
    stored. Returns how many vectors were written."""

    def fetch(after: int) -> list:
        return vectors.chunks_to_embed(
            space=space, chatbot_id=chatbot.pk, limit=settings.EMBEDDING_BATCH_SIZE, after=after
        )

    return _embed_batches(
        chatbot.tenant_id, chatbot.pk, space, provider_for(space.model_key), fetch, progress or (lambda count: None)
    )


def ingestion_spaces(*, chatbot: Chatbot) -> list[EmbeddingSpace]:
    """Spaces new content is embedded into: the active one first, then any being built."""
    chatbot_space_ensure_active(chatbot=chatbot)
    links = ChatbotSpace.objects.filter(
        chatbot=chatbot, role__in=[ChatbotSpace.Role.ACTIVE, ChatbotSpace.Role.BUILDING]
    )
    links = sorted(links.select_related("space"), key=lambda link: link.role != ChatbotSpace.Role.ACTIVE)
    return [link.space for link in links]


# --- Uploads ----------------------------------------------------------------------------


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
            job = _job_create(document)
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


def _job_create(document: Document) -> IngestionJob:
    job = IngestionJob.objects.create(tenant_id=document.tenant_id, document=document)
    job_id, tenant_id = job.pk, job.tenant_id
    transaction.on_commit(lambda: _enqueue(job_id, tenant_id))
    return job


def _enqueue(job_id: int, tenant_id: int) -> None:
    """Send the job's message. If the broker (Redis) is down the upload still stands: the job is
    committed as ``queued`` and the sweeper sends it again once the broker is back."""
    from knowledge.tasks import ingestion_job_run_task

    try:
        ingestion_job_run_task.delay(job_id=job_id, tenant_id=tenant_id)
    except Exception:  # kombu's OperationalError and friends: nothing is lost, only delayed
        logger.warning("could not queue ingestion job %s (broker unavailable); the sweeper will", job_id, exc_info=True)


def document_reprocess(*, tenant: Tenant, document: Document) -> IngestionJob:
    with transaction.atomic():
        document = Document.objects.for_tenant(tenant).select_for_update().get(pk=document.pk)
        if document.jobs.filter(status__in=[Status.QUEUED, Status.PROCESSING]).exists():
            raise Conflict("The document is already being processed; wait for it to finish.")
        document.status = Status.QUEUED
        document.error = ""
        document.save(update_fields=["status", "error", "updated_at"])
        return _job_create(document)


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


# --- The ingestion state machine --------------------------------------------------------


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.INGESTION_STALE_AFTER_SECONDS)


def _job_claim(*, job_id: int, lease_token: str) -> IngestionJob | None:
    """Take the job if it is queued, was ours (a redelivered message after our worker died),
    or its worker stopped sending heartbeats. Fails it after too many interruptions."""
    with transaction.atomic():
        job = IngestionJob.objects.select_for_update().select_related("document").filter(pk=job_id).first()
        if job is None or job.status in (Status.READY, Status.FAILED):
            return None
        if job.status == Status.PROCESSING:
            ours = job.lease_token == lease_token
            stale = job.heartbeat_at is None or job.heartbeat_at < _stale_before()
            if not ours and not stale:
                return None
            job.interruptions += 1
            if job.interruptions >= settings.INGESTION_MAX_ATTEMPTS:
                _fail(
                    job,
                    f"Processing was interrupted {job.interruptions} times (the worker crashed or was "
                    "stopped while handling this file), so it was given up. The file may be too large "
                    "or malformed; check it and reprocess.",
                )
                return None
        now = timezone.now()
        job.status = Status.PROCESSING
        job.attempts += 1
        job.lease_token = lease_token
        job.heartbeat_at = now
        job.started_at = job.started_at or now
        job.stage = Stage.PARSING
        job.error = ""
        job.save()
        Document.objects.filter(pk=job.document_id).update(status=Status.PROCESSING, error="", updated_at=now)
        return job


def _heartbeat(job: IngestionJob, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    fields["updated_at"] = fields["heartbeat_at"]
    if not IngestionJob.objects.filter(pk=job.pk, lease_token=job.lease_token, status=Status.PROCESSING).update(
        **fields
    ):
        raise LeaseLost()
    for name, value in fields.items():
        setattr(job, name, value)


class _Pulse:
    """The job's heartbeat from a thread of its own while the job runs, whatever the worker's
    main thread is doing (waiting on the parsing child, loading the model, a long embedding batch
    or SQL statement): a job whose worker is alive is never stale, so the sweeper never hands it
    to a second worker. The beat is conditional on the lease, and stops once the job is done or
    another worker holds it. (Progress and the lease check stay with ``_heartbeat``.)"""

    def __init__(self, job: IngestionJob):
        import threading

        self.job_id, self.lease, self.tenant_id = job.pk, job.lease_token, job.tenant_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"job-{job.pk}-heartbeat", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from django.db import connections

        try:
            with tenant_context(self.tenant_id):
                while not self.stopped.wait(settings.INGESTION_HEARTBEAT_SECONDS):
                    beating = IngestionJob.objects.filter(
                        pk=self.job_id, lease_token=self.lease, status=Status.PROCESSING
                    ).update(heartbeat_at=timezone.now())
                    if not beating:
                        return
        except Exception:  # a missed beat is only a missed beat; the job's own work reports errors
            logger.debug("heartbeat of job %s stopped", self.job_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connections


def _fail(job: IngestionJob, reason: str) -> None:
    now = timezone.now()
    IngestionJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED, error=reason, lease_token="", finished_at=now, updated_at=now
    )
    Document.objects.filter(pk=job.document_id).update(status=Status.FAILED, error=reason, updated_at=now)
    logger.info("ingestion job %s failed: %s", job.pk, reason)


def ingestion_job_release(*, job_id: int, reason: str) -> int:
    """Hand a job back to the queue to wait for the embedding provider; returns how often it waited."""
    with transaction.atomic():
        job = IngestionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status in (Status.READY, Status.FAILED):
            return 0
        job.provider_waits += 1
        if job.provider_waits > settings.INGESTION_PROVIDER_MAX_WAIT_RETRIES:
            _fail(job, f"The embedding provider stayed unavailable after {job.provider_waits - 1} retries: {reason}")
            return job.provider_waits
        job.status = Status.QUEUED
        job.stage = Stage.PROVIDER_WAIT
        job.lease_token = ""
        job.error = reason
        job.save()
        Document.objects.filter(pk=job.document_id).update(status=Status.QUEUED, updated_at=timezone.now())
        return job.provider_waits


def ingestion_job_run(*, job_id: int, lease_token: str | None = None) -> str:
    """Parse, chunk and embed one document. Safe to run again at any point: chunks are keyed by
    (document, position) and vectors by (chunk, space), so a rerun only does what is missing.

    Raises ProviderUnavailable (the caller retries later) and OperationalError (database away).
    """
    job = _job_claim(job_id=job_id, lease_token=lease_token or uuid.uuid4().hex)
    if job is None:
        return "skipped"
    document = job.document
    try:
        with tenant_context(document.tenant), _Pulse(job):
            _ingest(job, document)
        return "ready"
    except ParseError as exc:
        _fail(job, exc.reason)
    except ProviderError as exc:
        _fail(job, str(exc))
    except LeaseLost:
        return "lease lost"
    except IntegrityError:
        if not Document.objects.filter(pk=document.pk).exists():
            return "document deleted"
        raise
    except (ProviderUnavailable, OperationalError):
        raise
    except Exception as exc:  # a parser bug must fail the job with a reason, not kill the queue
        logger.exception("ingestion job %s crashed", job_id)
        _fail(job, f"Unexpected error while processing the file ({type(exc).__name__}: {exc}).")
    return "failed"


def _parse_and_prepare(job: IngestionJob, data: bytes, filename: str, plan: ChunkingPlan) -> tuple:
    """Parse the file and prepare its chunks, in a resource-limited child process
    (``knowledge/parsers/sandbox.py``) unless turned off; each stage has a time limit (the job's
    heartbeat goes on meanwhile: ``_Pulse``)."""

    def on_stage(stage: str) -> None:
        _heartbeat(job, stage=Stage.CHUNKING, progress=6)

    if not settings.PARSER_SANDBOX:
        parsed = parse_file(data, filename)
        on_stage("chunking")
        with _time_limit(settings.INGESTION_CHUNKING_SECONDS):
            return parsed, prepare(parsed, plan)
    limits = Limits(
        memory_mb=settings.PARSER_MEMORY_MB,
        cpu_seconds=settings.PARSER_CPU_SECONDS,
        wall_seconds=settings.PARSER_WALL_SECONDS,
        chunking_seconds=settings.INGESTION_CHUNKING_SECONDS,
    )
    return sandbox_for(limits).parse_and_prepare(data, filename, chunking=plan, on_stage=on_stage)


@contextmanager
def _time_limit(seconds: float):
    """In-process preparing (``PARSER_SANDBOX=0``): a SIGALRM deadline where signals can be used
    (the main thread); patterns and Python code stop at it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expired(signum, frame):
        raise ParseError(
            f"Splitting the file's text into chunks needed longer than {seconds:g} s, so it was stopped. "
            "Split it or simplify it, then upload again."
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _ingest(job: IngestionJob, document: Document) -> None:
    chatbot = document.chatbot
    spaces = ingestion_spaces(chatbot=chatbot)
    primary = provider_for(spaces[0].model_key)

    _heartbeat(job, stage=Stage.PARSING, progress=2)
    with document.file.open("rb") as handle:
        data = handle.read()
    plan = ChunkingPlan(
        max_tokens=min(chatbot.chunk_size, primary.max_tokens),
        overlap=chatbot.chunk_overlap,
        tokenizer=primary.tokenizer,
        model_max=primary.max_tokens,
        title=document_title_context(document.title, document.original_filename),
    )
    parsed, prepared = _parse_and_prepare(job, data, document.original_filename, plan)
    drafts, dropped, language = prepared.drafts, prepared.dropped, prepared.language
    if not drafts and not parsed.conversations:
        raise ParseError("No usable text: every part of the file was empty or boilerplate.")
    exact = _chunks_store(job, document, drafts, parsed.conversations)

    total = len(drafts) * len(spaces)
    _heartbeat(job, stage=Stage.EMBEDDING, chunks_total=total, progress=EMBED_PROGRESS_FROM)
    done_before = 0
    for space in spaces:
        done_before = _embed_missing(job, document, space, provider_for(space.model_key), done_before, total)

    _heartbeat(job, stage=Stage.FINALIZING, progress=EMBED_PROGRESS_TO + 2)
    near = 0
    if drafts:
        near = vectors.flag_near_duplicates(
            space=spaces[0],
            document_id=document.pk,
            chatbot_id=chatbot.pk,
            threshold=settings.NEAR_DUPLICATE_SIMILARITY,
            exclude_document_id=document.replaces_id,
        )
    report = quality.build_report(
        drafts=drafts,
        dropped=dropped,
        parse_warnings=parsed.warnings,
        stats=parsed.stats,
        exact_duplicates=exact,
        near_duplicates=near,
        language=language,
        page_count=parsed.page_count,
    )
    _finish(job, document, parsed.detected_type, parsed.page_count, len(drafts), report, language)


def _chunks_store(
    job: IngestionJob, document: Document, drafts: list[ChunkDraft], conversations: list[ParsedConversation]
) -> int:
    """Write the chunk rows (and conversations) once; a rerun with the same chunking keeps them,
    and their vectors, as they are. Returns the number of exact duplicates flagged."""
    wanted = [(i, d.content_hash, d.context) for i, d in enumerate(drafts)]
    # The lease check stays outside the transaction: inside it, its row lock would stall the job's
    # pulse (``_Pulse``) for as long as the chunks take to write, and the job would look silent.
    _heartbeat(job, chunks_total=len(drafts))
    with transaction.atomic():
        existing = list(
            Chunk.objects.filter(document=document)
            .order_by("position")
            .values_list("position", "content_hash", "context")
        )
        if existing == wanted and Conversation.objects.filter(document=document).count() == len(conversations):
            return Chunk.objects.filter(document=document, duplicate_of__isnull=False).count()
        Chunk.objects.filter(document=document).delete()
        Conversation.objects.filter(document=document).delete()
        tenant_id, chatbot_id = document.tenant_id, document.chatbot_id
        Chunk.objects.bulk_create(
            [
                Chunk(
                    tenant_id=tenant_id,
                    chatbot_id=chatbot_id,
                    document=document,
                    position=i,
                    text=d.text,
                    context=d.context,
                    token_count=d.token_count,
                    kind=d.kind,
                    page=d.page,
                    page_end=d.page_end,
                    heading_path=list(d.heading_path),
                    metadata=d.metadata,
                    content_hash=d.content_hash,
                )
                for i, d in enumerate(drafts)
            ],
            batch_size=1000,
        )
        _conversations_store(document, conversations)
        return vectors.flag_exact_duplicates(document_id=document.pk, exclude_document_id=document.replaces_id)


def _conversations_store(document: Document, conversations: list[ParsedConversation]) -> None:
    tenant_id, chatbot_id = document.tenant_id, document.chatbot_id
    rows = Conversation.objects.bulk_create(
        [
            Conversation(
                tenant_id=tenant_id,
                chatbot_id=chatbot_id,
                document=document,
                position=i,
                external_id=c.external_id[:200],
                metadata=c.metadata,
                turn_count=len(c.turns),
            )
            for i, c in enumerate(conversations)
        ],
        batch_size=1000,
    )
    turns, pairs = [], []
    for row, conversation in zip(rows, conversations):
        turns.extend(
            ConversationTurn(
                tenant_id=tenant_id,
                conversation=row,
                position=i,
                role=t.role,
                speaker=t.speaker[:200],
                content=t.content,
            )
            for i, t in enumerate(conversation.turns)
        )
        pairs.extend(
            QAPair(
                tenant_id=tenant_id,
                chatbot_id=chatbot_id,
                conversation=row,
                question_turn=q,
                answer_turn=a,
                question=conversation.turns[q].content,
                answer=conversation.turns[a].content,
            )
            for q, a in conversation.qa_pairs()
        )
    ConversationTurn.objects.bulk_create(turns, batch_size=2000)
    QAPair.objects.bulk_create(pairs, batch_size=2000)


def _embed_missing(
    job: IngestionJob,
    document: Document,
    space: EmbeddingSpace,
    provider: EmbeddingProvider,
    done_before: int,
    total: int,
) -> int:
    """Embed the document's chunks that have no vector in ``space`` or one made from another input
    (their context changed), in batches; a rerun does only what is still missing."""
    done = done_before + vectors.embeddings_current(space=space, document_id=document.pk)
    span = EMBED_PROGRESS_TO - EMBED_PROGRESS_FROM

    def fetch(after: int) -> list:
        return vectors.chunks_to_embed(
            space=space, document_id=document.pk, limit=settings.EMBEDDING_BATCH_SIZE, after=after
        )

    def stored(count: int) -> None:
        nonlocal done
        done += count
        _heartbeat(job, chunks_done=done, progress=EMBED_PROGRESS_FROM + int(span * done / max(total, 1)))

    _embed_batches(document.tenant_id, document.chatbot_id, space, provider, fetch, stored)
    return done


def _embed_batches(tenant_id: int, chatbot_id: int, space: EmbeddingSpace, provider, fetch, stored) -> int:
    """Embed and store every batch ``fetch(after_chunk_id)`` returns ((chunk id, text, context)
    rows in id order), replacing stale vectors; ``stored(n)`` after each write. The next batch is
    embedded in a thread of its own while this one is written, so the model never waits for the
    database (the thread does no database work: writes stay on this connection, in its
    transaction and tenant scope). Returns how many were stored."""
    from concurrent.futures import ThreadPoolExecutor

    def submit(batch):
        if not batch:
            return None
        inputs = [embedding_text(text, context) for _, text, context in batch]
        return batch, inputs, encoder.submit(provider.embed, inputs)

    count = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed") as encoder:
        pending = submit(fetch(0))
        while pending is not None:
            batch, inputs, vectors_future = pending
            embeddings = vectors_future.result()
            pending = submit(fetch(batch[-1][0]))
            ChunkEmbedding.objects.bulk_create(
                [
                    ChunkEmbedding(
                        tenant_id=tenant_id,
                        chatbot_id=chatbot_id,
                        chunk_id=chunk_id,
                        space=space,
                        embedding=vector,
                        input_hash=input_hash(text),
                    )
                    for (chunk_id, _, _), text, vector in zip(batch, inputs, embeddings)
                ],
                update_conflicts=True,
                unique_fields=["chunk", "space"],
                update_fields=["embedding", "input_hash"],
            )
            count += len(batch)
            stored(len(batch))
    return count


def _finish(
    job: IngestionJob,
    document: Document,
    detected_type: str,
    page_count: int | None,
    chunk_count: int,
    report: dict,
    language: str,
) -> None:
    """Make the document searchable, and retire the one it replaces, in one transaction."""
    now = timezone.now()
    with transaction.atomic():
        _heartbeat(
            job,
            status=Status.READY,
            stage=Stage.DONE,
            progress=100,
            chunks_done=job.chunks_total,
            lease_token="",
            finished_at=now,
            error="",
        )
        if document.replaces_id:
            old = Document.objects.filter(pk=document.replaces_id, chatbot_id=document.chatbot_id).first()
            if old is not None:
                file_name, storage = old.file.name, old.file.storage
                old.delete()
                transaction.on_commit(lambda: storage.delete(file_name))
        Document.objects.filter(pk=document.pk).update(
            status=Status.READY,
            error="",
            detected_type=detected_type,
            page_count=page_count,
            chunk_count=chunk_count,
            quality=report,
            language=language,
            processed_at=now,
            updated_at=now,
        )
        chatbot_content_changed(chatbot_id=document.chatbot_id)


def chunk_embeddings_refresh(*, chatbot_id: int | None = None) -> dict:
    """Chunks stored before contexts existed get theirs (worked out from what was stored: kind,
    heading path, the document's title) and every vector made without one is made again from its
    chunk's context and text, in place (searches go on with the old vector until its new one is
    written). Finds the chatbots across tenants, then works in each chatbot's own tenant scope.
    Run by `make run` at start, by beat and by ``manage.py reembed_chunks``; idempotent."""
    with cross_tenant_context("chunk-embedding-refresh"):
        pending = vectors.chatbots_with_stale_embeddings(chatbot_id=chatbot_id)
    done = {"chatbots": 0, "contexts": 0, "embeddings": 0}
    for bot_id, tenant_id in pending:
        with tenant_context(tenant_id):
            chatbot = Chatbot.objects.filter(pk=bot_id).first()
            if chatbot is None:
                continue
            contexts, embedded = _chatbot_embeddings_refresh(chatbot)
        done["chatbots"] += 1
        done["contexts"] += contexts
        done["embeddings"] += embedded
        if embedded:
            chatbot_content_changed(chatbot_id=bot_id)
    return done


def stored_chunk_context(*, kind: str, heading_path, title: str) -> str:
    """The context a chunk stored before contexts existed would have been given (the parser's
    context is not stored: an FAQ row's question is its heading, a record's title too)."""
    heading_path = [part for part in (heading_path or []) if isinstance(part, str)]
    if kind in ("faq", "qa"):
        return f"Q: {heading_path[0]}" if heading_path else ""
    if kind == "record":
        return heading_path[0] if heading_path else ""
    if kind in DOCUMENT_KINDS:
        return " › ".join(part for part in (title, *heading_path) if part)
    return ""


def _chatbot_embeddings_refresh(chatbot: Chatbot) -> tuple[int, int]:
    contexts = 0
    while True:
        missing = list(
            Chunk.objects.filter(chatbot=chatbot, context__isnull=True)
            .select_related("document")
            .only("id", "kind", "heading_path", "document__title", "document__original_filename")[:1000]
        )
        if not missing:
            break
        for chunk in missing:
            title = document_title_context(chunk.document.title, chunk.document.original_filename)
            chunk.context = stored_chunk_context(kind=chunk.kind, heading_path=chunk.heading_path, title=title)
        Chunk.objects.bulk_update(missing, ["context"], batch_size=1000)
        contexts += len(missing)
    embedded = 0
    for space in ingestion_spaces(chatbot=chatbot):

        def fetch(after: int, space=space) -> list:
            return vectors.chunks_to_embed(
                space=space, chatbot_id=chatbot.pk, limit=settings.EMBEDDING_BATCH_SIZE, unknown_input_only=True,
                after=after,
            )  # fmt: skip

        embedded += _embed_batches(
            chatbot.tenant_id, chatbot.pk, space, provider_for(space.model_key), fetch, lambda count: None
        )
    return contexts, embedded


def ingestion_jobs_sweep() -> dict:
    """Re-queue jobs whose worker went silent or whose message was lost; the claim then counts
    the interruption and gives up after INGESTION_MAX_ATTEMPTS. Nothing stays 'processing'."""
    stale = _stale_before()
    with cross_tenant_context("ingestion-sweeper"):
        silent = list(
            IngestionJob.objects.filter(status=Status.PROCESSING)
            .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
            .values_list("id", "tenant_id")
        )
        lost = list(
            IngestionJob.objects.filter(status=Status.QUEUED, updated_at__lt=stale).values_list("id", "tenant_id")
        )
        for job_id, tenant_id in silent + lost:
            IngestionJob.objects.filter(pk=job_id).update(updated_at=timezone.now())
            _enqueue(job_id, tenant_id)
    return {"requeued_silent": len(silent), "requeued_lost": len(lost)}


def ingestion_job_chatbot_id(*, job_id: int) -> int | None:
    return IngestionJob.objects.filter(pk=job_id).values_list("document__chatbot_id", flat=True).first()


def ingestion_job_tenant_id(*, job_id: int) -> int | None:
    """The job's tenant, for a task message sent before messages carried it (the one lookup a
    task makes before it knows its tenant)."""
    with cross_tenant_context("ingestion-task-tenant"):
        return IngestionJob.objects.filter(pk=job_id).values_list("tenant_id", flat=True).first()


def vector_index_wanted(*, chatbot_id: int) -> bool:
    """Whether the chatbot has crossed the size for its own vector index without having one yet."""
    existing = vectors.chatbot_indexes()
    return any(
        count > settings.VECTOR_CHATBOT_INDEX_MIN
        and vectors.chatbot_index_name(space_id=space_id, chatbot_id=bot_id) not in existing
        for (space_id, bot_id), count in vectors.vector_counts(chatbot_id=chatbot_id).items()
    )


def vector_indexes_optimize(*, chatbot_id: int | None = None) -> dict:
    """Give every chatbot with more than ``VECTOR_CHATBOT_INDEX_MIN`` vectors in a space its own
    partial HNSW index there (smaller chatbots are searched exactly), rebuild indexes a crashed
    build left invalid, and drop indexes of chatbots that shrank below half the threshold or are
    gone. Run by beat, and for one chatbot after each document it ingests. Returns what it did."""
    with cross_tenant_context("vector-index-upkeep"):
        return _vector_indexes_optimize(chatbot_id=chatbot_id)


def _vector_indexes_optimize(*, chatbot_id: int | None) -> dict:
    threshold = settings.VECTOR_CHATBOT_INDEX_MIN
    done: dict = {"created": [], "dropped": [], "rebuilt": []}
    connection = scope_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext('knowledge.vector_indexes_optimize'))")
        if not cursor.fetchone()[0]:
            return {**done, "skipped": "another optimisation is running"}
    try:
        counts = vectors.vector_counts(chatbot_id=chatbot_id)
        existing = vectors.chatbot_indexes()
        spaces = {space.pk: space for space in EmbeddingSpace.objects.filter(pk__in={s for s, _ in counts})}
        wanted = {}
        for (space_id, bot_id), count in counts.items():
            name = vectors.chatbot_index_name(space_id=space_id, chatbot_id=bot_id)
            if count > threshold or (name in existing and count >= threshold // 2):
                wanted[name] = (spaces[space_id], bot_id)
        for name, valid in existing.items():
            mine = chatbot_id is None or name.endswith(f"_c{chatbot_id}")
            if mine and (name not in wanted or not valid):
                vectors.chatbot_index_drop(name)
                (done["rebuilt"] if name in wanted else done["dropped"]).append(name)
        for name, (space, bot_id) in wanted.items():
            if name not in existing or not existing[name]:
                began = time.monotonic()
                vectors.chatbot_index_create(space=space, chatbot_id=bot_id)
                logger.info("vector index %s built in %.1f s", name, time.monotonic() - began)
                if name not in done["rebuilt"]:
                    done["created"].append(name)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(hashtext('knowledge.vector_indexes_optimize'))")
    return done
