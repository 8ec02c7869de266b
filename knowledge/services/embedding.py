"""Writing vectors: each batch embedded while the previous one is stored."""

from __future__ import annotations

import logging

from knowledge.chunking import embedding_text, input_hash
from knowledge.models import (
    ChunkEmbedding,
    EmbeddingSpace,
)

logger = logging.getLogger(__name__)


def embed_batches(tenant_id: int, chatbot_id: int, space: EmbeddingSpace, provider, fetch, stored) -> int:
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
