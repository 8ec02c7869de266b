"""The embedding-space analysis's reads (search/services/analysis/): the chatbot's vectors.

Both read all of the chatbot's vectors, chunks and documents, so both pin hash joins
(``knowledge/plans.py``): unpinned, a new tenant's one-row estimates put the chatbot's chunks on
the inner side of a nested loop, half of them read again per vector (322,000 and 322,300 rows
for 800 vectors; pinned, 1,661 and 1,961: linear in the chatbot's rows)."""

from __future__ import annotations

from django.db import connection, transaction

from knowledge.models import EmbeddingSpace
from knowledge.plans import plan_pinned


def chunk_vector_count(*, space: EmbeddingSpace, chatbot_id: int) -> int:
    """How many of the chatbot's ready chunks have a vector in ``space`` (pass a space's store)."""
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            """
            SELECT count(*) FROM knowledge_chunkembedding e
            JOIN knowledge_chunk c ON c.id = e.chunk_id
            JOIN knowledge_document d ON d.id = c.document_id
            WHERE e.space_id = %s AND e.chatbot_id = %s AND c.chatbot_id = %s AND d.chatbot_id = %s
              AND d.status = 'ready'
            """,
            [space.pk, chatbot_id, chatbot_id, chatbot_id],
        )
        return cursor.fetchone()[0]


def chunk_vectors(*, space: EmbeddingSpace, chatbot_id: int, limit: int, seed: int = 0, text_chars: int = 2000):
    """(chunk id, document id, document title, the first ``text_chars`` of the text, vector as a
    float list) of up to ``limit`` of the chatbot's ready chunks with a vector in ``space`` (pass
    a space's store), in chunk id order. Past ``limit`` the rows are a deterministic sample: the
    chunks first by a hash of their id and ``seed``, so the same seed reads the same chunks."""
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            """
            SELECT * FROM (
                SELECT c.id, c.document_id, d.title, left(c.text, %(chars)s), e.embedding::real[]
                FROM knowledge_chunkembedding e
                JOIN knowledge_chunk c ON c.id = e.chunk_id
                JOIN knowledge_document d ON d.id = c.document_id
                WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND c.chatbot_id = %(chatbot)s
                  AND d.chatbot_id = %(chatbot)s AND d.status = 'ready'
                ORDER BY md5(%(seed)s || ':' || c.id::text), c.id LIMIT %(limit)s
            ) picked ORDER BY 1
            """,
            {"space": space.pk, "chatbot": chatbot_id, "limit": int(limit), "seed": str(seed), "chars": text_chars},
        )
        return cursor.fetchall()
