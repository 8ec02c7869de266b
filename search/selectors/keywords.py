"""Search-time keyword SQL: BM25 over the stored tsvector, a trigram fallback."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.db import transaction

from chatbot_training import replicas
from search.filters import SearchFilters
from search.selectors.hits import NO_FILTERS, RESULT_COLUMNS, Hit, _hits

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
