"""Re-embedding what changed: chunks stored before contexts existed, vectors made from an old input."""

from __future__ import annotations

import logging

from django.conf import settings

from knowledge import vectors
from knowledge.embeddings import (
    provider_for_space,
)
from knowledge.models import (
    Chunk,
)
from knowledge.preparation import (
    DOCUMENT_KINDS,
    document_title_context,
)
from knowledge.services.embedding import embed_batches
from knowledge.services.spaces import ingestion_spaces
from tenants.models import Chatbot
from tenants.scoping import cross_tenant_context, tenant_context
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)


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

        embedded += embed_batches(
            chatbot.tenant_id, chatbot.pk, space, provider_for_space(space), fetch, lambda count: None
        )
    return contexts, embedded
