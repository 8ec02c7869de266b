"""Search over a chatbot's ready chunks: semantic, keyword, or both fused; conversation-aware,
filtered, cached in Redis and logged."""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from knowledge.embeddings import provider_for
from knowledge.models import EmbeddingSpace
from knowledge.services import chatbot_space_ensure_active
from knowledge.vectors import chatbot_index_exists
from search import cache
from search.filters import SearchFilters
from search.logbuffer import search_log_enqueue, search_logs_flush
from search.metrics import SEARCH_LATENCY, SEARCHES, ZERO_RESULTS
from search.models import SearchBlend, SearchFeedback, SearchLog
from search.selectors import (
    NO_FILTERS,
    Hit,
    TextStats,
    candidate_count,
    chunk_cosines,
    document_frequencies,
    keyword_hits,
    query_lexemes,
    semantic_hits,
    text_stats,
)
from tenants import inputs
from tenants.errors import DomainError, NotFound
from tenants.models import ApiKey, Chatbot, Tenant
from tenants.services import chatbot_content_changed

MODES = ("semantic", "keyword", "hybrid")
MAX_QUERY_CHARS = 2000
MAX_CONVERSATION_TURNS = 50
RRF_K = 60
# Conversation-aware search: weights of earlier user turns (most recent first) in the query
# vector; the current question weighs 1. A short follow-up ("and how much is it?") leans on the
# history more, and only a short one gets the history's words added to its keyword query
# (measured on real conversations: see tests/test_search_shared.py). Assistant turns are not
# used: their text is the earlier answer, which would pull the query back to the old question.
HISTORY_USER_WEIGHTS = (0.3, 0.15, 0.05)
SHORT_FOLLOW_UP_WEIGHTS = (0.6, 0.3, 0.15)
SHORT_FOLLOW_UP_WORDS = 3
HISTORY_KEYWORDS = 6

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each else even ever few for from further get got
    had has have having he her here hers herself him himself his how however i if in into is it its itself just
    know let like me more most much my myself need no nor not now of off on once only or other our ours ourselves
    out over own please same she should so some such tell than thank thanks that the their theirs them themselves
    then there these they this those through to too under until up us very want was we were what when where which
    while who whom why will with would yes yet you your yours yourself yourselves ok okay hi hello hey really
    something anything thing things one ones way make sure great good well""".split()
)
_WORD = re.compile(r"[^\W_][\w'-]*[^\W_]|[^\W_]", re.UNICODE)


@dataclass
class SearchResult:
    results: list[Hit]
    took_ms: float
    embedding_space: str
    mode: str
    query_id: uuid.UUID
    effective_query: str
    cache_hit: bool = False
    strategy: str = ""
    semantic_weight: float | None = None


@dataclass
class Turn:
    role: str
    content: str


@dataclass
class QueryPlan:
    """What a search actually embeds and matches: the current question plus weighted history."""

    query: str
    effective_query: str
    weighted_texts: list[tuple[str, float]] = field(default_factory=list)


def _content_words(text: str) -> list[str]:
    return [w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if len(w) > 2 and w not in STOPWORDS]


def query_plan_build(*, query: str, conversation: list[Turn] | None = None) -> QueryPlan:
    """The earlier turns add their meaning to the query vector (decaying weights) and their
    content words to the keyword query, so "and how much does that cost?" keeps its subject."""
    conversation = conversation or []
    users = [t.content for t in conversation if t.role == "user" and t.content.strip()]
    if users and users[-1].strip() == query.strip():
        users = users[:-1]  # the client repeated the current question as the last turn
    present = _content_words(query)
    short = len(set(present)) <= SHORT_FOLLOW_UP_WORDS
    weights = SHORT_FOLLOW_UP_WEIGHTS if short else HISTORY_USER_WEIGHTS
    weighted = [(query, 1.0)]
    for text, weight in zip(reversed(users), weights):
        weighted.append((text, weight))
    extra: list[str] = []
    for text in reversed(users[-len(weights) :]) if short else ():
        for word in _content_words(text):
            if word not in present and word not in extra:
                extra.append(word)
    extra = extra[:HISTORY_KEYWORDS]
    effective = query if not extra else f"{query} {' '.join(extra)}"
    return QueryPlan(query=query, effective_query=effective, weighted_texts=weighted)


def query_vector(space: EmbeddingSpace, plan: QueryPlan) -> np.ndarray:
    """Embeds each text once (Redis-cached per space and text) and blends them by weight."""
    texts = [cache.normalise_query(text) for text, _ in plan.weighted_texts]
    keys = [cache.embedding_key(space.key, text) for text in texts]
    vectors = cache.get_many_vectors(keys)
    missing = [i for i, v in enumerate(vectors) if v is None]
    if missing:
        fresh = provider_for(space.model_key).embed([texts[i] for i in missing])
        for i, vector in zip(missing, fresh):
            vectors[i] = np.asarray(vector, dtype=np.float32)
        cache.set_vectors({keys[i]: vectors[i] for i in missing})
    if len(vectors) == 1:
        return vectors[0]
    blended = sum(weight * vector for (_, weight), vector in zip(plan.weighted_texts, vectors))
    norm = float(np.linalg.norm(blended))
    return blended / norm if norm else blended


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
    *, space: EmbeddingSpace, chatbot: Chatbot, vector, limit: int, filters: SearchFilters
) -> tuple[list[Hit], str]:
    """Exact search when the filtered candidate set is small, HNSW iterative scan otherwise (with
    an exact re-run if the index walk gave up before finding enough rows)."""
    key = cache.plan_key(
        chatbot_id=chatbot.pk,
        content_version=chatbot.content_version,
        space_id=space.pk,
        filters_digest=filters.digest(),
    )
    count = cache.get_json(key, "plan")
    if count is None:
        count = candidate_count(space=space, chatbot_id=chatbot.pk, filters=filters, cap=settings.SEARCH_EXACT_MAX + 1)
        cache.set_json(key, count, settings.SEARCH_RESULTS_CACHE_TTL)
    if count == 0:
        return [], "empty"
    if count <= settings.SEARCH_EXACT_MAX:
        return semantic_hits(
            space=space, chatbot_id=chatbot.pk, vector=vector, limit=limit, filters=filters, exact=True
        ), "exact"
    own_index = chatbot_index_exists(space_id=space.pk, chatbot_id=chatbot.pk)
    hits = semantic_hits(
        space=space,
        chatbot_id=chatbot.pk,
        vector=vector,
        limit=limit,
        filters=filters,
        # the chatbot's own index holds only its vectors: a narrower walk finds the same neighbours
        ef_search=settings.SEARCH_HNSW_EF_SEARCH_OWN_INDEX if own_index else settings.SEARCH_HNSW_EF_SEARCH,
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


_spaces: dict[tuple[int, int], EmbeddingSpace] = {}


def _active_space(chatbot: Chatbot) -> EmbeddingSpace:
    """The chatbot's active space, remembered per process for its content version (switching the
    active space bumps the content version, like any change of what search returns)."""
    key = (chatbot.pk, chatbot.content_version)
    space = _spaces.get(key)
    if space is None:
        space = chatbot_space_ensure_active(chatbot=chatbot).space
        if len(_spaces) > 10_000:
            _spaces.clear()
        _spaces[key] = space
    return space


def _validate(query: str, mode: str, conversation) -> str:
    query = inputs.text(query or "", field="query").strip()
    for turn in conversation or ():
        inputs.text(turn.content, field="conversation", label="a conversation turn")
    if not query:
        raise DomainError("query must not be empty.", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise DomainError(f"query must be at most {MAX_QUERY_CHARS} characters.", field="query")
    if mode not in MODES:
        raise DomainError(f"mode must be one of {', '.join(MODES)}.", field="mode")
    if conversation and len(conversation) > MAX_CONVERSATION_TURNS:
        raise DomainError(f"conversation holds at most {MAX_CONVERSATION_TURNS} turns.", field="conversation")
    return query


def search_run(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    query: str,
    max_results: int = 5,
    similarity_threshold: float = 0.0,
    mode: str = "semantic",
    filters: SearchFilters = NO_FILTERS,
    conversation: list[Turn] | None = None,
    semantic_weight: float | None = None,
    api_key: ApiKey | None = None,
    user=None,
    source: str = SearchLog.Source.API,
    log: bool = True,
    use_cache: bool = True,
    space: EmbeddingSpace | None = None,
) -> SearchResult:
    """Runs one search and logs it. ``semantic_weight`` (hybrid only): 0 = keyword only,
    1 = vectors only, ``None`` = chosen per query (see ``auto_semantic_weight``)."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    query = _validate(query, mode, conversation)
    began = time.perf_counter()
    space = space or _active_space(chatbot)
    plan = query_plan_build(query=query, conversation=conversation)
    key = results_cache_key(
        chatbot_id=chatbot.pk,
        content_version=chatbot.content_version,
        space_id=space.pk,
        plan=plan,
        mode=mode,
        max_results=max_results,
        threshold=similarity_threshold,
        filters=filters,
        weight=semantic_weight,
    )
    cached = cache.get_json(key, "results") if use_cache else None
    vector = None
    if cached is not None:
        results = [Hit(**hit) for hit in cached["results"]]
        strategy, weight, cache_hit = cached["strategy"], cached["weight"], True
    else:
        cache_hit, strategy, weight = False, "", semantic_weight
        semantic: list[Hit] = []
        keyword: list[Hit] = []
        fetch = max_results if mode == "semantic" else max(max_results * 4, 40)
        if mode in ("semantic", "hybrid"):
            vector = query_vector(space, plan)
            semantic, strategy = _semantic_search(
                space=space, chatbot=chatbot, vector=vector, limit=fetch, filters=filters
            )
        if mode in ("keyword", "hybrid"):
            stats, frequencies = _term_statistics(chatbot, query_lexemes(plan.effective_query))
            keyword = keyword_hits(
                chatbot_id=chatbot.pk,
                query=plan.effective_query,
                limit=fetch,
                filters=filters,
                stats=stats,
                frequencies=frequencies,
            )
        if mode == "semantic":
            results = semantic
        elif mode == "keyword":
            results = keyword[:max_results]
        else:
            if weight is None:
                weight = auto_semantic_weight(semantic, keyword, blend_keyword_factor(chatbot))
            known = {hit.chunk_id for hit in semantic}
            cosines = chunk_cosines(
                space=space, chunk_ids=[h.chunk_id for h in keyword if h.chunk_id not in known], vector=vector
            )
            results = fuse(semantic, keyword, limit=fetch, semantic_weight=weight, cosines=cosines)
        if similarity_threshold > 0 and mode != "keyword":
            results = [h for h in results if h.score is not None and h.score >= similarity_threshold]
        results = results[:max_results]
        if use_cache:
            cache.set_json(
                key,
                {"results": [asdict(h) for h in results], "strategy": strategy, "weight": weight},
                settings.SEARCH_RESULTS_CACHE_TTL,
            )
    took_ms = round((time.perf_counter() - began) * 1000, 2)
    query_id = uuid.uuid4()
    if log:
        top = top_cosine(results, mode)
        embedding = None
        gap = not results or (top is not None and top < settings.SEARCH_LOW_SCORE)
        if gap and not cache_hit:  # a gap keeps its vector (a cached repeat is grouped by its text)
            embedding = vector if vector is not None else query_vector(space, plan)
        search_logged(
            tenant_id=tenant.pk,
            chatbot_id=chatbot.pk,
            space_key=space.key,
            plan=plan,
            query_id=query_id,
            mode=mode,
            filters=filters,
            parameters={"max_results": max_results, "threshold": similarity_threshold, "weight": semantic_weight},
            conversation=conversation,
            results=results,
            took_ms=took_ms,
            cache_hit=cache_hit,
            strategy=strategy,
            embedding=embedding,
            api_key_id=api_key.pk if api_key is not None else None,
            user_id=user.pk if user is not None and user.is_authenticated else None,
            source=source,
        )
    return SearchResult(
        results=results,
        took_ms=took_ms,
        embedding_space=space.key,
        mode=mode,
        query_id=query_id,
        effective_query=plan.effective_query,
        cache_hit=cache_hit,
        strategy=strategy,
        semantic_weight=weight if mode == "hybrid" else None,
    )


def top_cosine(results: list[Hit], mode: str) -> float | None:
    """The best cosine similarity of a result list (keyword scores are not cosines)."""
    scores = [h.score for h in results if h.score is not None]
    return max(scores) if scores and mode != "keyword" else None


def results_cache_key(
    *, chatbot_id: int, content_version: int, space_id: int, plan: QueryPlan, mode: str, max_results: int,
    threshold: float, filters: SearchFilters, weight: float | None,
) -> str:  # fmt: skip
    parameters = {
        "q": [[cache.normalise_query(t), w] for t, w in plan.weighted_texts],
        "mode": mode,
        "max_results": max_results,
        "threshold": float(threshold),
        "filters": filters.as_dict(),
        "weight": None if weight is None else float(weight),
    }
    return cache.results_key(
        chatbot_id=chatbot_id, content_version=content_version, space_id=space_id, parameters=parameters
    )


def search_count(*, mode: str, cache_hit: bool, strategy: str, took_ms: float, empty: bool) -> None:
    """Counts one search in the Prometheus metrics."""
    cached_label = "yes" if cache_hit else "no"
    SEARCHES.labels(mode, cached_label, strategy or "none").inc()
    SEARCH_LATENCY.labels(mode, cached_label).observe(took_ms / 1000)
    if empty:
        ZERO_RESULTS.labels(mode).inc()


def search_log_row(
    *, tenant_id: int, chatbot_id: int, space_key: str, plan: QueryPlan, query_id, mode: str, filters: SearchFilters,
    parameters: dict, conversation, results: list[Hit] | None, took_ms: float, cache_hit: bool, strategy: str,
    embedding, api_key_id: int | None, user_id: int | None, source: str,
) -> dict:  # fmt: skip
    """A SearchLog row as queued (``results`` None: filled in from the cached answer when written)."""
    row = {
        "tenant_id": tenant_id,
        "query_id": str(query_id),
        "chatbot_id": chatbot_id,
        "api_key_id": api_key_id,
        "user_id": user_id,
        "source": source,
        "query": plan.query,
        "effective_query": plan.effective_query if plan.effective_query != plan.query else "",
        "mode": mode,
        "filters": filters.as_dict(),
        "parameters": parameters,
        "conversation_turns": len(conversation or []),
        "took_ms": took_ms,
        "cache_hit": cache_hit,
        "embedding_space": space_key,
        "strategy": strategy,
        "query_embedding": None if embedding is None else np.round(np.asarray(embedding, dtype=float), 6).tolist(),
        "created_at": timezone.now().isoformat(),
    }
    if results is not None:
        row.update(result_fields(results, mode))
    return row


def result_fields(results: list[Hit], mode: str) -> dict:
    return {
        "result_count": len(results),
        "result_chunk_ids": [h.chunk_id for h in results],
        "result_ranks": [[h.ranks.get("semantic"), h.ranks.get("keyword")] for h in results if mode == "hybrid"],
        "top_score": top_cosine(results, mode),
    }


# --- The hybrid blend each chatbot learns from its feedback ---------------------------------

_factors: dict[tuple[int, int], float] = {}


def blend_keyword_factor(chatbot: Chatbot) -> float:
    """The chatbot's learned keyword factor (1.0 until feedback says otherwise), remembered per
    process for its content version (a change of the factor that matters bumps the version)."""
    key = (chatbot.pk, chatbot.content_version)
    factor = _factors.get(key)
    if factor is None:
        blend = SearchBlend.objects.filter(chatbot_id=chatbot.pk).only("keyword_votes", "vector_votes").first()
        factor = blend.keyword_factor if blend is not None else 1.0
        if len(_factors) > 10_000:
            _factors.clear()
        _factors[key] = factor
    return factor


def _blend_vote(*, tenant: Tenant, log: SearchLog, chunk_id: int, helpful: bool) -> None:
    """Which list was right about a chunk of a hybrid search: a helpful chunk that the keyword
    list ranked above the vector list is a vote for keywords (and the other way round); an
    unhelpful one is a vote against the list that ranked it higher."""
    if log.mode != "hybrid" or chunk_id not in (log.result_chunk_ids or []):
        return
    ranks = log.result_ranks or []
    position = log.result_chunk_ids.index(chunk_id)
    if position >= len(ranks):
        return
    semantic, keyword = (rank if rank is not None else 10**6 for rank in ranks[position])
    if semantic == keyword:
        return
    keyword_won = (keyword < semantic) == helpful
    with transaction.atomic():
        blend, _ = SearchBlend.objects.select_for_update().get_or_create(
            tenant=tenant, chatbot_id=log.chatbot_id, defaults={"keyword_votes": 0, "vector_votes": 0}
        )
        before = round(blend.keyword_factor, 1)
        if keyword_won:
            blend.keyword_votes += 1
        else:
            blend.vector_votes += 1
        blend.save(update_fields=["keyword_votes", "vector_votes", "updated_at"])
        if round(blend.keyword_factor, 1) != before:  # cached answers were blended with the old factor
            chatbot_content_changed(chatbot_id=log.chatbot_id)


def search_logged(**fields) -> None:
    """Counts the search in the metrics and queues its log row (fields as ``search_log_row``)."""
    results = fields["results"]
    search_count(
        mode=fields["mode"],
        cache_hit=fields["cache_hit"],
        strategy=fields["strategy"],
        took_ms=fields["took_ms"],
        empty=not results,
    )
    search_log_enqueue(search_log_row(**fields))


def search_feedback_create(
    *,
    tenant: Tenant,
    query_id,
    helpful: bool,
    chunk_id: int | None = None,
    comment: str = "",
    api_key: ApiKey | None = None,
) -> SearchFeedback:
    log = SearchLog.objects.for_tenant(tenant).filter(query_id=query_id).first()
    if log is None:
        search_logs_flush()  # the search may still be queued
        log = SearchLog.objects.for_tenant(tenant).filter(query_id=query_id).first()
    if log is None or (api_key is not None and api_key.chatbot_id not in (None, log.chatbot_id)):
        raise NotFound("Search not found.", field="query_id")
    comment = inputs.text(comment, field="comment", max_length=2000)
    if chunk_id is not None and chunk_id not in (log.result_chunk_ids or []):
        raise NotFound("That chunk was not among this search's results.", field="chunk_id")
    if chunk_id is not None and not SearchFeedback.objects.filter(search=log, chunk_id=chunk_id).exists():
        _blend_vote(tenant=tenant, log=log, chunk_id=chunk_id, helpful=helpful)  # one vote per result
    return SearchFeedback.objects.create(
        tenant=tenant,
        search=log,
        chatbot_id=log.chatbot_id,
        helpful=helpful,
        chunk_id=chunk_id,
        comment=comment,
        api_key=api_key,
    )
