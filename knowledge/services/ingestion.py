"""The ingestion pipeline a claimed job runs: parse in the sandbox, chunk, store rerun-safe
(keyed by (document, position) and (chunk, space)), embed into every space, finish atomically."""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from knowledge import quality, vectors
from knowledge.chunking import ChunkDraft
from knowledge.embeddings import (
    EmbeddingProvider,
    ProviderError,
    ProviderUnavailable,
    provider_for_space,
)
from knowledge.models import (
    Chunk,
    Conversation,
    ConversationTurn,
    Document,
    EmbeddingSpace,
    IngestionJob,
    QAPair,
)
from knowledge.parsers import ParsedConversation, ParseError, parse_file
from knowledge.parsers.sandbox import Limits, sandbox_for
from knowledge.preparation import (
    ChunkingPlan,
    document_title_context,
    prepare,
)
from knowledge.services.embedding import embed_batches
from knowledge.services.jobs import (
    EMBED_PROGRESS_FROM,
    EMBED_PROGRESS_TO,
    LeaseLost,
    Pulse,
    Stage,
    Status,
    heartbeat,
    job_claim,
    job_fail,
)
from knowledge.services.spaces import ingestion_spaces
from tenants.scoping import tenant_context
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)


def ingestion_job_run(*, job_id: int, lease_token: str | None = None) -> str:
    """Parse, chunk and embed one document. Safe to run again at any point: chunks are keyed by
    (document, position) and vectors by (chunk, space), so a rerun only does what is missing.

    Raises ProviderUnavailable (the caller retries later) and OperationalError (database away).
    """
    job = job_claim(job_id=job_id, lease_token=lease_token or uuid.uuid4().hex)
    if job is None:
        return "skipped"
    document = job.document
    try:
        with tenant_context(document.tenant), Pulse(job):
            _ingest(job, document)
        return "ready"
    except ParseError as exc:
        job_fail(job, exc.reason)
    except ProviderError as exc:
        job_fail(job, str(exc))
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
        job_fail(job, f"Unexpected error while processing the file ({type(exc).__name__}: {exc}).")
    return "failed"


def _parse_and_prepare(job: IngestionJob, data: bytes, filename: str, plan: ChunkingPlan) -> tuple:
    """Parse the file and prepare its chunks, in a resource-limited child process
    (``knowledge/parsers/sandbox.py``) unless turned off; each stage has a time limit (the job's
    heartbeat goes on meanwhile: ``Pulse``)."""

    def on_stage(stage: str) -> None:
        heartbeat(job, stage=Stage.CHUNKING, progress=6)

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
    primary = provider_for_space(spaces[0])

    heartbeat(job, stage=Stage.PARSING, progress=2)
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
    heartbeat(job, stage=Stage.EMBEDDING, chunks_total=total, progress=EMBED_PROGRESS_FROM)
    done_before = 0
    for space in spaces:
        done_before = _embed_missing(job, document, space, provider_for_space(space), done_before, total)

    heartbeat(job, stage=Stage.FINALIZING, progress=EMBED_PROGRESS_TO + 2)
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
    # pulse (``Pulse``) for as long as the chunks take to write, and the job would look silent.
    heartbeat(job, chunks_total=len(drafts))
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
        heartbeat(job, chunks_done=done, progress=EMBED_PROGRESS_FROM + int(span * done / max(total, 1)))

    embed_batches(document.tenant_id, document.chatbot_id, space, provider, fetch, stored)
    return done


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
        heartbeat(
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
