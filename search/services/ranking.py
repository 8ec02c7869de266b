"""Finding and ordering hits: exact or HNSW vector search, BM25 statistics, the hybrid blend."""

from __future__ import annotations

import math

from django.conf import settings

from knowledge.models import EmbeddingSpace
from knowledge.vectors import chatbot_index_exists
from search import cache
from search.filters import SearchFilters
from search.selectors import (
    Hit,
    TextStats,
    candidate_count,
    document_frequencies,
    semantic_hits,
    text_stats,
)
from tenants.models import Chatbot

RRF_K = 60


def fuse(
    semantic: list[Hit], keyword: list[Hit], *, limit: int, semantic_weight: float, cosines: dict | None = None
) -> list[Hit]:
    """Weighted blend of the two lists' scores: ``w * cosine + (1 - w) * bm25 / best bm25``.

    Cosine similarity is already on a fixed scale; BM25 is scaled by the query's best keyword
    score. A keyword-only hit uses its real cosine when known (``cosines``), else the lowest
    cosine of the vector list; a vector-only hit has keyword score 0. Each hit keeps its cosine
    and its rank in both lists.
    """
    cosines = dict(cosines or {})
    cosines.update({hit.chunk_id: hit.score for hit in semantic})
    floor = min((hit.score for hit in semantic), default=0.0)
    best_keyword = max((hit.score for hit in keyword), default=0.0) or 1.0
    bm25 = {hit.chunk_id: hit.score / best_keyword for hit in keyword}
    fused: dict[int, Hit] = {}
    for name, hits in (("semantic", semantic), ("keyword", keyword)):
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.chunk_id, hit)
            entry.ranks[name] = rank
    for hit in fused.values():
        cosine = cosines.get(hit.chunk_id)
        hit.score = cosine
        hit.ranks["fused_score"] = semantic_weight * (floor if cosine is None else cosine) + (
            1 - semantic_weight
        ) * bm25.get(hit.chunk_id, 0.0)
    ordered = sorted(fused.values(), key=lambda h: (-h.ranks["fused_score"], h.chunk_id))
    return ordered[:limit]


# Default hybrid weighting, measured with bench/quality.py (SciFact; COVID FAQ paraphrases against
# full and short FAQ entries, where keywords are much weaker than vectors; BANKING77), from the
# score distributions of each query:
# - while the vector list is confident (best cosine >= 0.5), keyword evidence may add up to
#   AUTO_KEYWORD_SHARE of a cosine unit, and less the more decisive the vector list is (the gap
#   between its first and second cosine, scale AUTO_MARGIN_SCALE): keywords break near-ties, they
#   do not overturn a clear vector answer (where they did, on FAQ paraphrases, hybrid fell below
#   semantic search);
# - as the vector list loses confidence (codes, names, rare terms the model does not know) keyword
#   evidence gains weight, up to an even blend at a best cosine of 0.2;
# - and each chatbot's own feedback moves its keyword share (SearchBlend: helpful results that the
#   keyword list ranked higher than the vector list, and the other way round).
AUTO_KEYWORD_SHARE = 0.15


AUTO_MARGIN_SCALE = 0.05


AUTO_CONFIDENT_COSINE = 0.5


AUTO_LOST_COSINE = 0.2


def auto_semantic_weight(semantic: list[Hit], keyword: list[Hit], keyword_factor: float = 1.0) -> float:
    """The vector weight for one query, from how confident and how decisive the vector list is,
    and the chatbot's learned keyword factor."""
    if not keyword:
        return 1.0
    if not semantic:
        return 0.0
    scores = sorted((hit.score for hit in semantic), reverse=True)
    top, margin = scores[0], scores[0] - (scores[1] if len(scores) > 1 else 0.0)
    share = min(1.0, AUTO_KEYWORD_SHARE * keyword_factor * math.exp(-max(margin, 0.0) / AUTO_MARGIN_SCALE))
    if top < AUTO_CONFIDENT_COSINE:
        lost = min(1.0, (AUTO_CONFIDENT_COSINE - top) / (AUTO_CONFIDENT_COSINE - AUTO_LOST_COSINE))
        share += (1.0 - share) * lost
    return round(1.0 / (1.0 + share), 4)


def _semantic_search(
    *,
    space: EmbeddingSpace,
    chatbot: Chatbot,
    vector,
    limit: int,
    filters: SearchFilters,
    ef_search: int | None = None,
    exact_max: int | None = None,
) -> tuple[list[Hit], str]:
    """Exact search when the filtered candidate set is small, HNSW iterative scan otherwise (with
    an exact re-run if the index walk gave up before finding enough rows). ``ef_search`` and
    ``exact_max``: the chatbot's measured tuning (``Serving``); None: the settings' defaults."""
    exact_max = settings.SEARCH_EXACT_MAX if exact_max is None else exact_max
    key = cache.plan_key(
        chatbot_id=chatbot.pk,
        content_version=chatbot.content_version,
        space_id=space.pk,
        filters_digest=filters.digest(),
    )
    count = cache.get_json(key, "plan")
    if count is None:
        count = candidate_count(space=space, chatbot_id=chatbot.pk, filters=filters, cap=exact_max + 1)
        cache.set_json(key, count, settings.SEARCH_RESULTS_CACHE_TTL)
    if count == 0:
        return [], "empty"
    if count <= exact_max:
        return semantic_hits(
            space=space, chatbot_id=chatbot.pk, vector=vector, limit=limit, filters=filters, exact=True
        ), "exact"
    if ef_search is None:
        own_index = chatbot_index_exists(space_id=space.pk, chatbot_id=chatbot.pk)
        # the chatbot's own index holds only its vectors: a narrower walk finds the same neighbours
        ef_search = settings.SEARCH_HNSW_EF_SEARCH_OWN_INDEX if own_index else settings.SEARCH_HNSW_EF_SEARCH
    hits = semantic_hits(
        space=space,
        chatbot_id=chatbot.pk,
        vector=vector,
        limit=limit,
        filters=filters,
        ef_search=ef_search,
        max_scan_tuples=settings.SEARCH_HNSW_MAX_SCAN_TUPLES,
    )
    if len(hits) < limit:
        return semantic_hits(
            space=space, chatbot_id=chatbot.pk, vector=vector, limit=limit, filters=filters, exact=True
        ), "hnsw+exact"
    return hits, "hnsw"


def _term_statistics(chatbot: Chatbot, lexemes: list[str]) -> tuple[TextStats, dict[str, int]]:
    """BM25 statistics of the chatbot's text (chunk count, mean length, document frequency per
    lexeme), cached in one Redis hash per content version: computed once per lexeme per change."""
    key = cache.text_stats_key(chatbot_id=chatbot.pk, content_version=chatbot.content_version)
    fields = ["__chunks", "__mean_tokens", *(f"df:{lexeme}" for lexeme in lexemes)]
    values = cache.get_hash_fields(key, fields, "terms")
    fresh: dict = {}
    if values[0] is None or values[1] is None:
        stats = text_stats(chatbot_id=chatbot.pk)
        fresh.update({"__chunks": stats.chunks, "__mean_tokens": stats.mean_tokens})
    else:
        stats = TextStats(chunks=int(values[0]), mean_tokens=float(values[1]))
    frequencies = {lexeme: int(v) for lexeme, v in zip(lexemes, values[2:]) if v is not None}
    missing = [lexeme for lexeme in lexemes if lexeme not in frequencies]
    if missing:
        counted = document_frequencies(chatbot_id=chatbot.pk, lexemes=missing)
        frequencies.update(counted)
        fresh.update({f"df:{lexeme}": count for lexeme, count in counted.items()})
    cache.set_hash_fields(key, fresh, settings.SEARCH_RESULTS_CACHE_TTL)
    return stats, frequencies


def top_cosine(results: list[Hit], mode: str) -> float | None:
    """The best cosine similarity of a result list (keyword scores are not cosines)."""
    scores = [h.score for h in results if h.score is not None]
    return max(scores) if scores and mode != "keyword" else None
