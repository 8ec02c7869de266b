"""Vector SQL needed by ingestion: per-space HNSW indexes and near-duplicate lookups.
(Search-time vector SQL lives in ``search/selectors/vectors.py``.)"""

from __future__ import annotations

import re
import time

from django.db import connection, transaction

from knowledge.models import EmbeddingSpace
from knowledge.plans import HASH_JOINS, plan_pinned
from tenants import dbroles
from tenants.scoping import scope_connection


def space_index_name(space: EmbeddingSpace) -> str:
    return f"chunkemb_hnsw_space_{space.pk}"


def space_vector_expr(space: EmbeddingSpace, column: str = "embedding") -> str:
    """The indexed expression; queries must use exactly this to hit the space's index."""
    return f"({column}::vector({int(space.dimensions)}))"


def ensure_space_index(space: EmbeddingSpace) -> None:
    """A partial HNSW (cosine) index holding only this space's vectors, built in the caller's
    transaction by the owner's ``app_space_index_ensure`` (the app role owns no table)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [space_index_name(space)])
        if cursor.fetchone():
            return
        # CREATE INDEX refuses a table with pending trigger events (the deferred foreign-key checks
        # of vectors this transaction wrote): run them now, then defer again.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute("SELECT app_space_index_ensure(%s, %s)", [int(space.pk), int(space.dimensions)])


# What a chunk's vector is made from (knowledge.chunking.embedding_text) and its digest
# (knowledge.chunking.input_hash), in SQL, so stale vectors are found without reading every chunk.
EMBEDDING_INPUT_SQL = (
    "CASE WHEN coalesce(c.context, '') = '' OR starts_with(c.text, c.context) THEN c.text "
    "ELSE c.context || E'\\n' || c.text END"
)
INPUT_HASH_SQL = f"left(encode(sha256(convert_to({EMBEDDING_INPUT_SQL}, 'UTF8')), 'hex'), 16)"


def chunks_to_embed(
    *,
    space: EmbeddingSpace,
    limit: int,
    document_id: int | None = None,
    chatbot_id=None,
    unknown_input_only=False,
    after: int = 0,
) -> list:
    """(chunk id, text, context), in id order from past chunk id ``after``, of chunks with no vector
    in ``space`` or one made from another input: of one document, or of a chatbot's ready
    documents; or, with ``unknown_input_only``, a chatbot's chunks whose vectors were made before
    inputs were recorded."""
    if unknown_input_only:
        sql = """
            SELECT c.id, c.text, c.context FROM knowledge_chunkembedding e
            JOIN knowledge_chunk c ON c.id = e.chunk_id
            WHERE e.chatbot_id = %(chatbot)s AND e.space_id = %(space)s AND e.input_hash = '' AND c.id > %(after)s
            ORDER BY c.id LIMIT %(limit)s
        """
    else:
        sql = f"""
            SELECT c.id, c.text, c.context FROM knowledge_chunk c
            LEFT JOIN knowledge_chunkembedding e ON e.chunk_id = c.id AND e.space_id = %(space)s
            WHERE {_chunks_of(document_id)} AND c.id > %(after)s
              AND (e.id IS NULL OR e.input_hash IS DISTINCT FROM {INPUT_HASH_SQL})
            ORDER BY c.id LIMIT %(limit)s
        """
    params = {"space": space.pk, "document": document_id, "chatbot": chatbot_id, "limit": limit, "after": after}
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)  # the document's (chatbot's) chunks against their vectors: one hash join
        cursor.execute(sql, params)
        return cursor.fetchall()


def _chunks_of(document_id: int | None) -> str:
    """SQL condition on chunk ``c``: of the document, else of the chatbot's ready documents."""
    if document_id is not None:
        return "c.document_id = %(document)s"
    return (
        "c.chatbot_id = %(chatbot)s AND c.document_id IN "
        "(SELECT id FROM knowledge_document WHERE chatbot_id = %(chatbot)s AND status = 'ready')"
    )


def chunks_missing_count(*, space: EmbeddingSpace, chatbot_id: int) -> int:
    """How many chunks of the chatbot's ready documents lack a current vector in ``space``."""
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            f"""
            SELECT count(*) FROM knowledge_chunk c
            LEFT JOIN knowledge_chunkembedding e ON e.chunk_id = c.id AND e.space_id = %(space)s
            WHERE {_chunks_of(None)} AND (e.id IS NULL OR e.input_hash IS DISTINCT FROM {INPUT_HASH_SQL})
            """,
            {"space": space.pk, "chatbot": chatbot_id},
        )
        return cursor.fetchone()[0]


def chatbots_with_stale_embeddings(*, chatbot_id: int | None = None) -> list[tuple[int, int]]:
    """(chatbot, tenant) of every chatbot with chunks lacking a worked-out context or vectors made
    before inputs were recorded (both found by partial indexes); every tenant's in a cross-tenant scope."""
    where = "AND chatbot_id = %(chatbot)s" if chatbot_id is not None else ""
    with scope_connection().cursor() as cursor:
        cursor.execute(
            f"""
            SELECT DISTINCT chatbot_id, tenant_id FROM knowledge_chunk WHERE context IS NULL {where}
            UNION SELECT DISTINCT chatbot_id, tenant_id FROM knowledge_chunkembedding WHERE input_hash = '' {where}
            ORDER BY 1
            """,
            {"chatbot": chatbot_id},
        )
        return cursor.fetchall()


def embeddings_current(*, space: EmbeddingSpace, document_id: int) -> int:
    """How many of the document's chunks have an up-to-date vector in ``space``. The document's
    chunks against the chatbot's vectors in the space, hash joined (``plan_pinned``): unpinned, a
    new tenant's one-row estimates made the vectors the inner side of a nested loop, all of them
    read again for every chunk (640,800 rows for an 800-chunk document; now 1,601)."""
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            f"""
            SELECT count(*) FROM knowledge_chunk c
            JOIN knowledge_chunkembedding e ON e.chunk_id = c.id AND e.space_id = %(space)s
             AND e.chatbot_id = (SELECT chatbot_id FROM knowledge_document WHERE id = %(document)s)
            WHERE c.document_id = %(document)s AND e.input_hash = {INPUT_HASH_SQL}
            """,
            {"space": space.pk, "document": document_id},
        )
        return cursor.fetchone()[0]


def global_space_ensure(*, provider: str, model_name: str, version: str, dimensions: int) -> int:
    """The id of the built-in space, created with its index if missing (owner's function)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT app_global_space_ensure(%s, %s, %s, %s)", [provider, model_name, str(version), int(dimensions)]
        )
        return cursor.fetchone()[0]


CHATBOT_INDEX_PATTERN = r"^chunkemb_hnsw_s[0-9]+_c[0-9]+$"


def chatbot_index_name(*, space_id: int, chatbot_id: int) -> str:
    return f"chunkemb_hnsw_s{int(space_id)}_c{int(chatbot_id)}"


def vector_counts(*, chatbot_id: int | None = None) -> dict[tuple[int, int], int]:
    """Vectors per (space, chatbot): all of them, or one chatbot's."""
    where, args = ("WHERE chatbot_id = %s", [chatbot_id]) if chatbot_id is not None else ("", [])
    with scope_connection().cursor() as cursor:  # every tenant's, for index upkeep
        cursor.execute(
            f"SELECT space_id, chatbot_id, count(*) FROM knowledge_chunkembedding {where} GROUP BY 1, 2", args
        )
        return {(space, chatbot): count for space, chatbot, count in cursor.fetchall()}


def chatbot_indexes() -> dict[str, bool]:
    """The per-chatbot HNSW indexes: name -> valid (an interrupted concurrent build leaves an
    invalid one behind)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = 'knowledge_chunkembedding'::regclass AND c.relname ~ %s
            """,
            [CHATBOT_INDEX_PATTERN],
        )
        return dict(cursor.fetchall())


_known: tuple[float, frozenset[str]] = (0.0, frozenset())


def chatbot_index_exists(*, space_id: int, chatbot_id: int) -> bool:
    """Whether the chatbot has its own valid index in the space (the list is re-read at most once
    a minute per process: an index is only dropped once its chatbot is small enough to be
    searched exactly, so a stale answer only costs a wider HNSW walk for a minute)."""
    global _known
    if time.monotonic() > _known[0]:
        _known = (time.monotonic() + 60, frozenset(name for name, valid in chatbot_indexes().items() if valid))
    return chatbot_index_name(space_id=space_id, chatbot_id=chatbot_id) in _known[1]


def chatbot_index_create(*, space: EmbeddingSpace, chatbot_id: int) -> str:
    """A partial HNSW index over one chatbot's vectors in one space. The planner picks it for that
    chatbot's searches (their WHERE implies its predicate), so the index walk meets only the
    chatbot's own vectors instead of skipping everyone else's. Built CONCURRENTLY on an owner
    connection (searches and ingestion go on); inside a transaction, by the owner's function in
    that transaction."""
    name = chatbot_index_name(space_id=space.pk, chatbot_id=chatbot_id)
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT app_chatbot_index_create(%s, %s, %s)", [int(space.pk), int(space.dimensions), int(chatbot_id)]
            )
        return name
    with dbroles.owner_connect() as owner:
        owner.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON knowledge_chunkembedding "
            f"USING hnsw ({space_vector_expr(space)} vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
            f"WHERE space_id = {int(space.pk)} AND chatbot_id = {int(chatbot_id)}"
        )
    return name


def chatbot_index_drop(name: str) -> None:
    if not re.fullmatch(CHATBOT_INDEX_PATTERN, name):
        raise ValueError(f"not a chatbot vector index: {name!r}")
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SELECT app_chatbot_index_drop(%s)", [name])
        return
    with dbroles.owner_connect() as owner:
        owner.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


NEAR_EXACT_MAX_PAIRS = 4_000_000  # document chunks x chatbot vectors compared exactly; past it the HNSW index
# A chatbot with its own HNSW index and more vectors than this is walked through the index: about
# 1-2 ms a chunk against ~1 us a compared pair (770 FAQ rows against 4,600 vectors: 4.1 s exact).
NEAR_INDEX_MIN_OTHERS = 2_000


def flag_near_duplicates(
    *, space: EmbeddingSpace, document_id: int, chatbot_id: int, threshold: float, exclude_document_id: int | None
) -> int:
    """Point each chunk of the document at an earlier chunk of the chatbot whose vector is within
    ``threshold`` cosine similarity (exact duplicates are flagged separately).

    The document's vectors and the chatbot's are read once each with hash joins (no estimate can
    make either a per-row rescan, ``knowledge/plans.py``); each chunk's nearest earlier neighbour
    is then found among the materialised vectors — exactly, while the pairs compared stay under
    ``NEAR_EXACT_MAX_PAIRS`` and the chatbot has no index of its own past ``NEAR_INDEX_MIN_OTHERS``
    vectors; else through the HNSW index: each chunk's ten nearest (itself among them; a near
    duplicate is nearer than anything else, so an earlier one is there), then their chunks and
    documents looked up by key (hash joins there would read the tenant's rows once per chunk). The
    walk asks for no earlier ids: filtering inside it would make the HNSW scan of a document's
    first chunks, which have few earlier neighbours, read the whole index."""
    vec = space_vector_expr(space, "m.embedding")
    params = {
        "space": space.pk,
        "chatbot": chatbot_id,
        "document": document_id,
        "exclude": exclude_document_id,
        "max_distance": 1.0 - threshold,
    }
    with transaction.atomic(), connection.cursor() as cursor:  # the planner settings are transaction-local
        cursor.execute(
            """
            SELECT (SELECT count(*) FROM knowledge_chunk WHERE document_id = %(document)s),
                   (SELECT count(*) FROM knowledge_chunkembedding
                    WHERE space_id = %(space)s AND chatbot_id = %(chatbot)s)
            """,
            params,
        )
        mine, others = cursor.fetchone()
        mine_cte = f"""
            mine AS MATERIALIZED (
                SELECT e.chunk_id, {space_vector_expr(space, "e.embedding")} AS embedding
                FROM knowledge_chunk c
                JOIN knowledge_chunkembedding e ON e.chunk_id = c.id AND e.space_id = %(space)s
                WHERE c.document_id = %(document)s AND c.duplicate_of_id IS NULL
            )"""
        walk = mine * others > NEAR_EXACT_MAX_PAIRS or (
            others > NEAR_INDEX_MIN_OTHERS and chatbot_index_exists(space_id=space.pk, chatbot_id=chatbot_id)
        )
        if not walk:
            vec2 = "x.embedding"
            source = f"""
            others AS MATERIALIZED (
                SELECT o.chunk_id, {space_vector_expr(space, "o.embedding")} AS embedding
                FROM knowledge_chunkembedding o
                JOIN knowledge_chunk oc ON oc.id = o.chunk_id
                JOIN knowledge_document od ON od.id = oc.document_id
                WHERE o.space_id = %(space)s AND o.chatbot_id = %(chatbot)s AND oc.chatbot_id = %(chatbot)s
                  AND od.chatbot_id = %(chatbot)s AND od.status <> 'failed'
                  AND oc.document_id IS DISTINCT FROM %(exclude)s
            ),"""
            inner = f"""
                    SELECT x.chunk_id, {vec2} <=> m.embedding AS distance FROM others x
                    WHERE x.chunk_id < m.chunk_id ORDER BY {vec2} <=> m.embedding LIMIT 1"""
        else:
            vec2 = space_vector_expr(space, "o.embedding")
            source = ""
            inner = f"""
                    SELECT o.chunk_id, o.distance
                    FROM (
                        SELECT o.chunk_id, {vec2} <=> {vec} AS distance
                        FROM knowledge_chunkembedding o
                        WHERE o.space_id = %(space)s AND o.chatbot_id = %(chatbot)s
                        ORDER BY {vec2} <=> {vec}
                        LIMIT 10
                    ) o
                    CROSS JOIN LATERAL (
                        SELECT 1 FROM knowledge_chunk oc
                        WHERE oc.id = o.chunk_id AND oc.document_id IS DISTINCT FROM %(exclude)s
                          AND (SELECT od.status FROM knowledge_document od WHERE od.id = oc.document_id) <> 'failed'
                        OFFSET 0
                    ) alive
                    WHERE o.chunk_id < m.chunk_id
                    ORDER BY o.distance
                    LIMIT 1"""
        # the walk: no sort may stand in for the index (a new tenant's estimates make sorting all of its
        # vectors per chunk look cheap); the exact comparison: hash joins
        plan_pinned(cursor, {"hnsw.iterative_scan": "off", "enable_sort": "off"} if walk else HASH_JOINS)
        cursor.execute(
            f"""
            WITH {source}{mine_cte},
            near AS (
                SELECT m.chunk_id, nn.chunk_id AS other_id, nn.distance
                FROM mine m CROSS JOIN LATERAL ({inner}) nn
            )
            UPDATE knowledge_chunk c SET near_duplicate_of_id = near.other_id
            FROM near WHERE c.id = near.chunk_id AND near.distance <= %(max_distance)s
            """,
            params,
        )
        return cursor.rowcount


def flag_exact_duplicates(*, document_id: int, exclude_document_id: int | None) -> int:
    """Point each chunk of the document at the chatbot's first chunk with the same text hash.
    Set-based: the document's hashes are looked up once through the ``(chatbot, content_hash)``
    index (``= ANY``: key lookups, never a scan per chunk), the first id per hash taken by one
    aggregate. Linear in the document's chunks and their matches, whatever the estimates."""
    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            """
            WITH mine AS MATERIALIZED (
                SELECT id, chatbot_id, content_hash FROM knowledge_chunk WHERE document_id = %(document)s
            ),
            first AS MATERIALIZED (
                SELECT o.content_hash, min(o.id) AS first_id
                FROM knowledge_chunk o
                JOIN knowledge_document od ON od.id = o.document_id
                WHERE o.chatbot_id = (SELECT chatbot_id FROM knowledge_document WHERE id = %(document)s)
                  AND o.content_hash = ANY (ARRAY(SELECT DISTINCT content_hash FROM mine))
                  AND od.status <> 'failed' AND o.document_id IS DISTINCT FROM %(exclude)s
                GROUP BY o.content_hash
            )
            UPDATE knowledge_chunk c SET duplicate_of_id = f.first_id
            FROM mine m JOIN first f ON f.content_hash = m.content_hash
            WHERE c.id = m.id AND f.first_id < m.id
            """,
            {"document": document_id, "exclude": exclude_document_id},
        )
        return cursor.rowcount
