"""Search-time vector and keyword SQL. Every query is filtered to one chatbot, one embedding
space and documents that are ready; it is served by the space's partial HNSW index with
pgvector's iterative scan so filtering after the index scan does not drop results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.db import connection, transaction

from knowledge.models import EmbeddingSpace
from knowledge.vectors import space_vector_expr

RESULT_COLUMNS = """c.id, c.document_id, d.title, c.text, d.content_type, d.category, c.metadata, c.page,
    c.heading_path"""


@dataclass
class Hit:
    chunk_id: int
    document_id: int
    title: str
    content: str
    content_type: str
    category: str
    metadata: dict
    page: int | None
    heading: list
    score: float
    ranks: dict = field(default_factory=dict)


def _json(value, default):
    # Django's psycopg connection leaves jsonb as text in raw queries.
    if value is None:
        return default
    return json.loads(value) if isinstance(value, str) else value


def _hits(rows) -> list[Hit]:
    return [
        Hit(
            chunk_id=r[0],
            document_id=r[1],
            title=r[2],
            content=r[3],
            content_type=r[4],
            category=r[5],
            metadata=_json(r[6], {}),
            page=r[7],
            heading=_json(r[8], []),
            score=float(r[9]),
        )
        for r in rows
    ]


def semantic_hits(*, space: EmbeddingSpace, chatbot_id: int, vector: list[float], limit: int) -> list[Hit]:
    """Nearest chunks by cosine similarity (1 - cosine distance)."""
    expr = space_vector_expr(space, "e.embedding")
    literal = "[" + ",".join(f"{v:.7f}" for v in vector) + "]"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("SET LOCAL hnsw.ef_search = %s", [max(40, 2 * limit)])
        cursor.execute(
            f"""
            SELECT {RESULT_COLUMNS}, 1 - (nn.distance) AS score FROM (
                SELECT e.chunk_id, {expr} <=> %(vector)s::vector({int(space.dimensions)}) AS distance
                FROM knowledge_chunkembedding e
                WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s
                ORDER BY distance LIMIT %(fetch)s
            ) nn
            JOIN knowledge_chunk c ON c.id = nn.chunk_id
            JOIN knowledge_document d ON d.id = c.document_id AND d.status = 'ready'
            ORDER BY nn.distance LIMIT %(limit)s
            """,
            {"vector": literal, "space": space.pk, "chatbot": chatbot_id, "fetch": limit * 4, "limit": limit},
        )
        return _hits(cursor.fetchall())


def keyword_hits(*, chatbot_id: int, query: str, limit: int) -> list[Hit]:
    """Chunks matching any query term on the stored tsvector (GIN index), ranked by ts_rank_cd, so
    a natural-language question still finds chunks that share only some of its words."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {RESULT_COLUMNS}, ts_rank_cd(c.search_vector, q) AS score
            FROM knowledge_chunk c
            JOIN knowledge_document d ON d.id = c.document_id AND d.status = 'ready',
                 to_tsquery('english', replace(plainto_tsquery('english', %(query)s)::text, ' & ', ' | ')) q
            WHERE c.chatbot_id = %(chatbot)s AND c.search_vector @@ q
            ORDER BY score DESC, c.id LIMIT %(limit)s
            """,
            {"query": query, "chatbot": chatbot_id, "limit": limit},
        )
        return _hits(cursor.fetchall())
