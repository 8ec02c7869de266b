"""Search-time vector SQL. Every query is filtered to one chatbot, one embedding space and
documents that are ready; it is served by the space's partial HNSW index with pgvector's iterative
scan so filtering after the index scan does not drop results. Reads go to a read replica when there
is one (``chatbot_training/replicas.py``)."""

from __future__ import annotations

from django.db import connection, transaction

from chatbot_training import replicas
from knowledge.models import EmbeddingSpace
from knowledge.plans import plan_pinned
from knowledge.vectors import space_vector_expr
from search.filters import SearchFilters
from search.selectors.hits import NO_FILTERS, RESULT_COLUMNS, Hit, _hits, _literal


def content_caught_up(*, chatbot_id: int, content_version: int):
    """A check for ``replicas.caught_up``: the connection sees the chatbot at ``content_version``
    or later (so it holds every content change the caller has seen on the primary)."""

    def check(connection) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT content_version >= %s FROM tenants_chatbot WHERE id = %s", [content_version, chatbot_id]
            )
            row = cursor.fetchone()
        return bool(row and row[0])

    return check


def candidate_count(*, space: EmbeddingSpace, chatbot_id: int, filters: SearchFilters, cap: int) -> int:
    """How many vectors a search may return (ready documents, filters applied), counted up to
    ``cap``: the chatbot's vectors, each one's chunk and document looked up by key
    (``KEY_LOOKUPS``), so at most ``cap`` vectors and their keys are read whatever the estimates
    (pinned hash joins read all of a big chatbot's chunks; under a one-row estimate the planner
    still picked a nested loop over the tenant's documents, ~50 rows read per vector)."""
    where, params = filters.sql()

    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT count(*) FROM (
                    SELECT 1 FROM knowledge_chunkembedding e
                    {KEY_LOOKUPS.format(chunk="e.chunk_id")}
                    WHERE e.space_id = %s AND e.chatbot_id = %s AND d.status = 'ready' AND {where}
                    LIMIT %s
                ) candidates
                """,
                [space.pk, chatbot_id, *params, cap],
            )
            return cursor.fetchone()[0]

    return replicas.read(_read)


# A chunk and its document by primary key, as restrictions of subqueries the planner may not
# flatten (OFFSET 0): each is planned on its own with the key as its condition, so it is served by
# the primary key or the (tenant, id) index, both one-row lookups. Written as plain joins, a new
# tenant's one-row estimates made a scan of the chatbot's (or tenant's) rows with the key as a
# join filter look as cheap as the lookup, and the planner took it: per hit, half the chatbot's
# chunks read (32,980 rows for 40 hits of an 800-chunk chatbot; now 280). No chatbot condition
# on c or d: e.chatbot_id already holds one (a vector's chatbot is its chunk's), and one would
# offer the chatbot index as the inner scan again.
KEY_LOOKUPS = """
        CROSS JOIN LATERAL (SELECT * FROM knowledge_chunk c WHERE c.id = {chunk} OFFSET 0) c
        CROSS JOIN LATERAL (SELECT * FROM knowledge_document d WHERE d.id = c.document_id OFFSET 0) d"""


def semantic_query(
    *, space: EmbeddingSpace, chatbot_id: int, vector, limit: int, filters: SearchFilters, exact: bool
) -> tuple[str, dict]:
    expr = space_vector_expr(space, "e.embedding")
    dims = int(space.dimensions)
    where, params = filters.sql()
    named = {f"f{i}": value for i, value in enumerate(params)}
    where_named = where % tuple(f"%(f{i})s" for i in range(len(params))) if params else where
    if exact:
        # Candidates first (by the chunk's chatbot index), then every candidate's vector through
        # a hash semi-join on the (space, chatbot) index: one pass, no per-row index probes.
        nn = f"""
        cand AS MATERIALIZED (
            SELECT c.id FROM knowledge_chunk c
            JOIN knowledge_document d ON d.id = c.document_id
            WHERE c.chatbot_id = %(chatbot)s AND d.chatbot_id = %(chatbot)s AND d.status = 'ready'
              AND {where_named}
        ),
        nn AS MATERIALIZED (
            SELECT e.chunk_id, {expr} <=> %(vector)s::vector({dims}) AS distance
            FROM knowledge_chunkembedding e
            WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND e.chunk_id IN (SELECT id FROM cand)
            ORDER BY ({expr} <=> %(vector)s::vector({dims})) + 0 LIMIT %(limit)s  -- "+ 0": not the HNSW index
        )"""
    else:
        # The HNSW walk drives; each vector's chunk and document are looked up by key as it goes.
        nn = f"""
        nn AS MATERIALIZED (
            SELECT e.chunk_id, {expr} <=> %(vector)s::vector({dims}) AS distance
            FROM knowledge_chunkembedding e
            {KEY_LOOKUPS.format(chunk="e.chunk_id")}
            WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND d.status = 'ready' AND {where_named}
            ORDER BY {expr} <=> %(vector)s::vector({dims}) LIMIT %(limit)s
        )"""
    sql = f"""
        WITH {nn}
        SELECT {RESULT_COLUMNS}, 1 - nn.distance AS score
        FROM nn
        {KEY_LOOKUPS.format(chunk="nn.chunk_id")}
        ORDER BY nn.distance, c.id
        """
    return sql, {"vector": _literal(vector), "space": space.pk, "chatbot": chatbot_id, "limit": limit, **named}


def chunk_cosines(*, space: EmbeddingSpace, chunk_ids: list[int], vector) -> dict[int, float]:
    """Cosine similarity of given chunks to the query vector (keyword-only hits in hybrid search)."""
    if not chunk_ids:
        return {}
    expr = space_vector_expr(space, "e.embedding")

    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT e.chunk_id, 1 - ({expr} <=> %s::vector({int(space.dimensions)}))
                FROM knowledge_chunkembedding e WHERE e.space_id = %s AND e.chunk_id = ANY(%s)
                """,
                [_literal(vector), space.pk, list(chunk_ids)],
            )
            return {chunk_id: float(score) for chunk_id, score in cursor.fetchall()}

    return replicas.read(_read)


def _hnsw_settings(cursor, *, ef_search: int, max_scan_tuples: int) -> None:
    """Transaction-local: walk the HNSW graph iteratively until enough rows pass the filters, and
    keep the planner on the index (with a join it may otherwise sort all of a chatbot's rows)."""
    # One round trip. Index order drives the walk; each row is checked by primary-key lookups.
    cursor.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('enable_sort', 'off', true),"
        " set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),"
        " set_config('enable_material', 'off', true), set_config('hnsw.ef_search', %s, true),"
        " set_config('hnsw.max_scan_tuples', %s, true)",
        [str(ef_search), str(max_scan_tuples)],
    )


def semantic_plan(
    *, space: EmbeddingSpace, chatbot_id: int, vector, limit: int, filters: SearchFilters, exact: bool
) -> str:
    """EXPLAIN of the query ``semantic_hits`` runs (tests and diagnostics)."""
    sql, args = semantic_query(
        space=space, chatbot_id=chatbot_id, vector=vector, limit=limit, filters=filters, exact=exact
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            plan_pinned(cursor)
        else:
            _hnsw_settings(cursor, ef_search=100, max_scan_tuples=40000)
        cursor.execute("EXPLAIN " + sql, args)
        return "\n".join(row[0] for row in cursor.fetchall())


def semantic_hits(
    *,
    space: EmbeddingSpace,
    chatbot_id: int,
    vector,
    limit: int,
    filters: SearchFilters = NO_FILTERS,
    exact: bool = False,
    ef_search: int = 100,
    max_scan_tuples: int = 40000,
) -> list[Hit]:
    """Nearest chunks by cosine similarity (1 - cosine distance) among the chatbot's ready chunks
    that pass ``filters``.

    ``exact=True`` scans the candidates (through the ``(space, chatbot)`` btree) and sorts them:
    true nearest neighbours, for small candidate sets. Otherwise the space's partial HNSW index is
    walked with pgvector's iterative scan, which keeps going until ``limit`` rows have passed the
    chatbot/status/filter conditions (relaxed order, re-sorted outside).
    """
    sql, args = semantic_query(
        space=space, chatbot_id=chatbot_id, vector=vector, limit=limit, filters=filters, exact=exact
    )

    def _read(connection):
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            if exact:
                plan_pinned(cursor)  # a hash semi-join over the candidates, however few the estimates say
            else:
                _hnsw_settings(cursor, ef_search=max(ef_search, limit), max_scan_tuples=max_scan_tuples)
            cursor.execute(sql, args)
            return _hits(cursor.fetchall())

    return replicas.read(_read)
