"""Search-time vector and keyword SQL. Every query is filtered to one chatbot, one embedding
space and documents that are ready; it is served by the space's partial HNSW index with
pgvector's iterative scan so filtering after the index scan does not drop results."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, timedelta

from django.db import connection, transaction
from django.utils import timezone

from chatbot_training import replicas
from knowledge.models import EmbeddingSpace
from knowledge.vectors import space_vector_expr
from search.filters import SearchFilters

NO_FILTERS = SearchFilters()

RESULT_COLUMNS = """c.id, c.document_id, d.title, c.text, d.content_type, d.category, c.metadata, c.page,
    c.heading_path, coalesce(c.context, '')"""


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
    context: str = ""  # what the chunk was embedded with (its FAQ question, document title and headings)


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
            context=r[9],
            score=float(r[10]),
        )
        for r in rows
    ]


def _literal(vector) -> str:
    return "[" + ",".join(f"{float(v):.7f}" for v in vector) + "]"


def candidate_count(*, space: EmbeddingSpace, chatbot_id: int, filters: SearchFilters, cap: int) -> int:
    """How many vectors a search may return (ready documents, filters applied), counted up to ``cap``."""
    where, params = filters.sql()

    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT count(*) FROM (
                    SELECT 1 FROM knowledge_chunkembedding e
                    JOIN knowledge_chunk c ON c.id = e.chunk_id
                    JOIN knowledge_document d ON d.id = c.document_id
                    WHERE e.space_id = %s AND e.chatbot_id = %s AND c.chatbot_id = %s AND d.chatbot_id = %s
                      AND d.status = 'ready' AND {where}
                    LIMIT %s
                ) candidates
                """,
                [space.pk, chatbot_id, chatbot_id, chatbot_id, *params, cap],
            )
            return cursor.fetchone()[0]

    return replicas.read(_read)


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
        # The HNSW walk drives; chunk and document rows are checked by primary key as it goes.
        nn = f"""
        nn AS MATERIALIZED (
            SELECT e.chunk_id, {expr} <=> %(vector)s::vector({dims}) AS distance
            FROM knowledge_chunkembedding e
            JOIN knowledge_chunk c ON c.id = e.chunk_id
            JOIN knowledge_document d ON d.id = c.document_id
            WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND c.chatbot_id = %(chatbot)s
              AND d.chatbot_id = %(chatbot)s AND d.status = 'ready' AND {where_named}
            ORDER BY {expr} <=> %(vector)s::vector({dims}) LIMIT %(limit)s
        )"""
    sql = f"""
        WITH {nn}
        SELECT {RESULT_COLUMNS}, 1 - nn.distance AS score
        FROM nn
        JOIN knowledge_chunk c ON c.id = nn.chunk_id
        JOIN knowledge_document d ON d.id = c.document_id
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
        if not exact:
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
            if not exact:
                _hnsw_settings(cursor, ef_search=max(ef_search, limit), max_scan_tuples=max_scan_tuples)
            cursor.execute(sql, args)
            return _hits(cursor.fetchall())

    return replicas.read(_read)


# Okapi BM25 over the stored tsvector: document frequencies come from the GIN index (cached per
# content version by the service), term presence from ``@@`` on each candidate, length from the
# chunk's token count. Term frequency is taken as 1 (a chunk is short; tsvector has no cheap
# per-lexeme count), which keeps the whole ranking inside one indexed query.
BM25_K1 = 1.2
BM25_B = 0.75


@dataclass
class TextStats:
    chunks: int
    mean_tokens: float


def query_lexemes(query: str) -> list[str]:
    """The query's stemmed English lexemes (stop words dropped), as the stored tsvector holds them."""

    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute("SELECT tsvector_to_array(to_tsvector('english', %s))", [query[:2000]])
            return list(cursor.fetchone()[0] or [])

    return replicas.read(_read)


def text_stats(*, chatbot_id: int) -> TextStats:
    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT count(*), coalesce(avg(c.token_count), 1) FROM knowledge_chunk c
                JOIN knowledge_document d ON d.id = c.document_id AND d.status = 'ready'
                WHERE c.chatbot_id = %s
                """,
                [chatbot_id],
            )
            count, mean = cursor.fetchone()
            return TextStats(chunks=count, mean_tokens=float(mean) or 1.0)

    return replicas.read(_read)


def document_frequencies(*, chatbot_id: int, lexemes: list[str]) -> dict[str, int]:
    """How many of the chatbot's ready chunks hold each lexeme (one GIN bitmap count per lexeme)."""
    if not lexemes:
        return {}

    def _read(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT t.l, (SELECT count(*) FROM knowledge_chunk c
                             JOIN knowledge_document d ON d.id = c.document_id AND d.status = 'ready'
                             WHERE c.chatbot_id = %s AND c.search_vector @@ t.q::tsquery)
                FROM unnest(%s::text[], %s::text[]) AS t(l, q)
                """,
                [chatbot_id, lexemes, [_tsquery_term(lexeme) for lexeme in lexemes]],
            )
            return dict(cursor.fetchall())

    return replicas.read(_read)


def _tsquery_term(lexeme: str) -> str:
    """A lexeme as one quoted tsquery operand (parsed by PostgreSQL, passed as a parameter)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def keyword_hits(
    *,
    chatbot_id: int,
    query: str,
    limit: int,
    filters: SearchFilters = NO_FILTERS,
    stats: TextStats | None = None,
    frequencies: dict[str, int] | None = None,
) -> list[Hit]:
    """Chunks ranked by BM25 over the query's lexemes (GIN index on the stored tsvector); when no
    lexeme matches (a misspelled query), chunks containing words trigram-similar to the query."""
    where, params = filters.sql()
    named = {f"f{i}": value for i, value in enumerate(params)}
    where_named = where % tuple(f"%(f{i})s" for i in range(len(params))) if params else where
    stats = stats or text_stats(chatbot_id=chatbot_id)
    lexemes = query_lexemes(query)
    if frequencies is None:
        frequencies = document_frequencies(chatbot_id=chatbot_id, lexemes=lexemes)
    terms = [lexeme for lexeme in lexemes if frequencies.get(lexeme)]
    args = {"query": query, "chatbot": chatbot_id, "limit": limit, **named}

    def _read(connection):
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            if terms:
                total = max(stats.chunks, 1)
                weights = []
                for i, term in enumerate(terms):
                    df = frequencies[term]
                    args[f"t{i}"] = _tsquery_term(term)
                    args[f"w{i}"] = math.log(1 + (total - df + 0.5) / (df + 0.5))
                    weights.append(f"%(w{i})s * (c.search_vector @@ %(t{i})s::tsquery)::int")
                args["any_term"] = " | ".join(_tsquery_term(term) for term in terms)
                args["k1"], args["b"], args["avgdl"] = BM25_K1, BM25_B, stats.mean_tokens
                cursor.execute(
                    f"""
                    SELECT {RESULT_COLUMNS},
                        ({" + ".join(weights)}) * (%(k1)s + 1)
                        / (1 + %(k1)s * (1 - %(b)s + %(b)s * c.token_count / %(avgdl)s)) AS score
                    FROM knowledge_chunk c
                    JOIN knowledge_document d ON d.id = c.document_id
                    WHERE c.chatbot_id = %(chatbot)s AND d.status = 'ready' AND {where_named}
                      AND c.search_vector @@ %(any_term)s::tsquery
                    ORDER BY score DESC, c.id LIMIT %(limit)s
                    """,
                    args,
                )
                rows = cursor.fetchall()
                if rows:
                    return _hits(rows)
            cursor.execute("SELECT set_config('pg_trgm.word_similarity_threshold', '0.45', true)")
            cursor.execute(
                f"""
                SELECT {RESULT_COLUMNS}, word_similarity(%(query)s, c.text) AS score
                FROM knowledge_chunk c
                JOIN knowledge_document d ON d.id = c.document_id
                WHERE c.chatbot_id = %(chatbot)s AND d.status = 'ready' AND %(query)s <%% c.text AND {where_named}
                ORDER BY score DESC, c.id LIMIT %(limit)s
                """,
                args,
            )
            return _hits(cursor.fetchall())

    return replicas.read(_read)


def search_log_queryset(*, tenant, chatbot_id: int, days: int):
    from search.models import SearchLog

    since = timezone.now() - timedelta(days=days)
    return SearchLog.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)


def search_analytics(*, tenant, chatbot_id: int, days: int, low_score: float) -> dict:
    """Volume, latency percentiles, cache hit rate, gaps, top queries, feedback and a daily series."""
    from search.models import SearchBlend, SearchFeedback

    since = timezone.now() - timedelta(days=days)
    gap = "(result_count = 0 OR (top_score IS NOT NULL AND top_score < %(low)s))"
    args = {"tenant": tenant.pk, "chatbot": chatbot_id, "since": since, "low": low_score}
    scope = "tenant_id = %(tenant)s AND chatbot_id = %(chatbot)s AND created_at >= %(since)s"

    def _read(connection):  # one snapshot for the three figures, on a read replica when there is one
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT count(*),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY took_ms),
                       avg(cache_hit::int), count(*) FILTER (WHERE result_count = 0),
                       count(*) FILTER (WHERE result_count > 0 AND top_score < %(low)s), avg(top_score)
                FROM search_searchlog WHERE {scope}
                """,
                args,
            )
            total, p50, p95, hit_rate, zero, low, mean_top = cursor.fetchone()
            cursor.execute(
                f"""
                SELECT (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date AS day, count(*),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY took_ms),
                       avg((result_count = 0)::int), avg(cache_hit::int), count(*) FILTER (WHERE {gap})
                FROM search_searchlog WHERE {scope} GROUP BY 1 ORDER BY 1
                """,
                args,
            )
            by_day = {row[0]: row for row in cursor.fetchall()}
            cursor.execute(
                f"""
                SELECT lower(query), count(*), avg(top_score), avg(result_count), max(created_at)
                FROM search_searchlog WHERE {scope}
                GROUP BY 1 ORDER BY 2 DESC, 5 DESC LIMIT 10
                """,
                args,
            )
            top_queries = [
                {"query": q, "count": n, "mean_top_score": _round(s), "mean_results": _round(r), "last_seen": t}
                for q, n, s, r, t in cursor.fetchall()
            ]
            return total, p50, p95, hit_rate, zero, low, mean_top, by_day, top_queries

    total, p50, p95, hit_rate, zero, low, mean_top, by_day, top_queries = replicas.read(_read)
    blend = SearchBlend.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).first()
    feedback = SearchFeedback.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)
    feedback_count = feedback.count()
    helpful = feedback.filter(helpful=True).count()
    searches_with_feedback = feedback.values("search_id").distinct().count()
    series = []
    today = timezone.now().astimezone(UTC).date()
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        row = by_day.get(day)
        series.append(
            {
                "date": day.isoformat(),
                "searches": row[1] if row else 0,
                "p50_ms": _round(row[2]) if row else None,
                "p95_ms": _round(row[3]) if row else None,
                "zero_result_rate": _round(row[4]) if row else None,
                "cache_hit_rate": _round(row[5]) if row else None,
                "gaps": row[6] if row else 0,
            }
        )
    return {
        "chatbot_id": chatbot_id,
        "days": days,
        "searches": total,
        "latency_ms": {"p50": _round(p50), "p95": _round(p95)},
        "cache_hit_rate": _round(hit_rate),
        "zero_result_queries": zero,
        "zero_result_rate": _round(zero / total) if total else None,
        "low_score_queries": low,
        "low_score_threshold": low_score,
        "mean_top_score": _round(mean_top),
        "top_queries": top_queries,
        "feedback": {
            "count": feedback_count,
            "helpful": helpful,
            "not_helpful": feedback_count - helpful,
            "helpful_rate": _round(helpful / feedback_count) if feedback_count else None,
            "feedback_rate": _round(searches_with_feedback / total) if total else None,
        },
        "hybrid_blend": {  # what all of the chatbot's feedback taught its hybrid search (not only these days)
            "keyword_votes": blend.keyword_votes if blend else 0,
            "vector_votes": blend.vector_votes if blend else 0,
            "keyword_factor": round(blend.keyword_factor, 3) if blend else 1.0,
        },
        "daily": series,
    }


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def knowledge_gaps(
    *, tenant, chatbot_id: int, days: int, low_score: float, similarity: float = 0.75, limit: int = 500
) -> list[dict]:
    """Zero-result and low-score queries, grouped greedily by the cosine similarity of their
    embeddings (stored on the log row for gaps only), biggest group first."""
    import numpy as np
    from django.db.models import Q

    rows = list(
        search_log_queryset(tenant=tenant, chatbot_id=chatbot_id, days=days)
        .filter(Q(result_count=0) | Q(top_score__lt=low_score))
        .order_by("-created_at")
        .values_list("query", "top_score", "created_at", "query_embedding", "result_count")[:limit]
    )
    groups: list[dict] = []
    centroids: list = []
    for query, score, created, embedding, count in rows:
        vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
        target = None
        if vector is not None and centroids:
            sims = [float(np.dot(vector, c)) if c is not None else -1.0 for c in centroids]
            best = int(np.argmax(sims))
            if sims[best] >= similarity:
                target = best
        if target is None:
            for i, group in enumerate(groups):  # same words, no embedding (e.g. logged before)
                if query.casefold() in group["_texts"]:
                    target = i
                    break
        if target is None:
            groups.append({"_texts": {}, "count": 0, "zero_results": 0, "best_score": None, "last_seen": created})
            centroids.append(vector)  # the group's first query leads it
            target = len(groups) - 1
        group = groups[target]
        group["count"] += 1
        group["zero_results"] += int(count == 0)
        group["_texts"].setdefault(query.casefold(), [query, 0])[1] += 1
        if score is not None:
            group["best_score"] = max(score, group["best_score"] or 0.0)
        group["last_seen"] = max(group["last_seen"], created)
    out = []
    for group in groups:
        texts = sorted(group.pop("_texts").values(), key=lambda item: -item[1])
        out.append(
            {
                "query": texts[0][0],
                "examples": [text for text, _ in texts[:5]],
                "count": group["count"],
                "zero_results": group["zero_results"],
                "best_score": _round(group["best_score"]),
                "last_seen": group["last_seen"],
            }
        )
    return sorted(out, key=lambda g: (-g["count"], g["query"]))


SEARCH_LOG_EXPORT_COLUMNS = [
    "created_at", "query_id", "source", "api_key", "user", "query", "effective_query", "mode", "result_count",
    "top_score", "took_ms", "cache_hit", "strategy", "embedding_space",
]  # fmt: skip


def search_log_export_rows(*, tenant, chatbot_id: int, days: int, batch: int = 2000):
    """The chatbot's searches of the last ``days`` days, oldest first, as rows of
    ``SEARCH_LOG_EXPORT_COLUMNS``, read in batches by (created_at, id): each batch is one short
    query, so a long export holds no cursor or transaction open between batches."""
    from django.db.models import Q

    from search.models import SearchLog

    since = timezone.now() - timedelta(days=days)
    logs = SearchLog.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)
    after = None
    while True:
        page = logs.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1])) if after else logs
        rows = list(
            page.order_by("created_at", "id").values_list(
                "created_at", "query_id", "source", "api_key__prefix", "user__username", "query", "effective_query",
                "mode", "result_count", "top_score", "took_ms", "cache_hit", "strategy", "embedding_space", "id",
            )[:batch]
        )  # fmt: skip
        for row in rows:
            yield [row[0].isoformat(), str(row[1]), *row[2:-1]]
        if len(rows) < batch:
            return
        after = (rows[-1][0], rows[-1][-1])


def chunk_vector_count(*, space: EmbeddingSpace, chatbot_id: int) -> int:
    """How many of the chatbot's ready chunks have a vector in ``space`` (pass a space's store)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM knowledge_chunkembedding e
            JOIN knowledge_chunk c ON c.id = e.chunk_id
            JOIN knowledge_document d ON d.id = c.document_id
            WHERE e.space_id = %s AND e.chatbot_id = %s AND c.chatbot_id = %s AND d.status = 'ready'
            """,
            [space.pk, chatbot_id, chatbot_id],
        )
        return cursor.fetchone()[0]


def chunk_vectors(*, space: EmbeddingSpace, chatbot_id: int, limit: int, seed: int = 0, text_chars: int = 2000):
    """(chunk id, document id, document title, the first ``text_chars`` of the text, vector as a
    float list) of up to ``limit`` of the chatbot's ready chunks with a vector in ``space`` (pass
    a space's store), in chunk id order. Past ``limit`` the rows are a deterministic sample: the
    chunks first by a hash of their id and ``seed``, so the same seed reads the same chunks."""
    with connection.cursor() as cursor:
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


def gap_query_vectors(
    *, tenant, chatbot_id: int, space_key: str, days: int, low_score: float, limit: int = 200
) -> list[tuple[str, list]]:
    """(query, query vector) of the chatbot's recent distinct zero-result and low-score searches
    served by ``space_key`` (the log keeps a gap's vector), newest first."""
    from django.db.models import Q

    rows = (
        search_log_queryset(tenant=tenant, chatbot_id=chatbot_id, days=days)
        .filter(Q(result_count=0) | Q(top_score__lt=low_score), embedding_space=space_key)
        .exclude(query_embedding=None)
        .order_by("-created_at")
        .values_list("query", "query_embedding")[: limit * 5]
    )
    seen, out = set(), []
    for query, vector in rows:
        if query.casefold() in seen:
            continue
        seen.add(query.casefold())
        out.append((query, list(vector)))
        if len(out) >= limit:
            break
    return out


# --- The optimizer's reads (search/services/optimize/) ---------------------------------------


def chunk_vectors_sample(*, space: EmbeddingSpace, chatbot_id: int, count: int) -> list[list[float]]:
    """Up to ``count`` of the chatbot's stored vectors in ``space``, spread over its chunks (a
    fixed pseudo-random order, so two runs measure the same queries): queries for tuning when the
    chatbot has few logged searches."""
    dims = int(space.dimensions)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT e.embedding::vector({dims})::text FROM knowledge_chunkembedding e
            WHERE e.space_id = %s AND e.chatbot_id = %s
            ORDER BY md5(e.chunk_id::text) LIMIT %s
            """,
            [space.pk, chatbot_id, count],
        )
        return [json.loads(row[0]) for row in cursor.fetchall()]


def vector_count(*, space: EmbeddingSpace, chatbot_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM knowledge_chunkembedding WHERE space_id = %s AND chatbot_id = %s",
            [space.pk, chatbot_id],
        )
        return cursor.fetchone()[0]


VECTOR_TABLES = ("knowledge_chunkembedding", "knowledge_chunk")


def table_tuples(*, tables: tuple[str, ...] = VECTOR_TABLES) -> dict[str, dict]:
    """Live and dead tuples, size and last vacuum of each table (``pg_stat_user_tables``, read
    afresh: the statistics snapshot is cleared first)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            """
            SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid),
                   greatest(last_vacuum, last_autovacuum)
            FROM pg_stat_user_tables WHERE relname = ANY(%s)
            """,
            [list(tables)],
        )
        return {
            name: {
                "live_tuples": live,
                "dead_tuples": dead,
                "dead_share": round(dead / (live + 1), 4),
                "total_bytes": size,
                "last_vacuum": vacuumed.isoformat() if vacuumed else None,
            }
            for name, live, dead, size, vacuumed in cursor.fetchall()
        }


def index_bytes(name: str) -> int | None:
    """The size of an index, None if there is no such index."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(to_regclass(%s))", [name])
        size = cursor.fetchone()[0]
        return None if size is None else int(size)


def optimization_runs(*, tenant, chatbot_id: int, limit: int = 20) -> list:
    from search.models import OptimizationRun

    return list(
        OptimizationRun.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).order_by("-created_at", "-id")[:limit]
    )


def optimization_run_get(*, tenant, run_id, api_key=None):
    """The tenant's run (one its key may see), or NotFound."""
    from search.models import OptimizationRun
    from tenants.errors import NotFound
    from tenants.selectors import chatbot_list

    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise NotFound("Optimization run not found.", field="run_id") from None
    run = (
        OptimizationRun.objects.for_tenant(tenant)
        .filter(pk=run_id, chatbot__in=chatbot_list(tenant=tenant, api_key=api_key))
        .first()
    )
    if run is None:
        raise NotFound("Optimization run not found.", field="run_id")
    return run


def search_tuning_get(*, tenant, chatbot_id: int):
    from search.models import SearchTuning

    return SearchTuning.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).first()
