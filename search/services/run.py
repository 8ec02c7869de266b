"""One search's work, start to end, once its arguments are parsed and its caller checked: the
cached answer or the vector/keyword SQL, the cache entry and the log row. Entry points reach it
through ``search_answer`` (``search/services/answer.py``); benchmarks and evaluation call it
directly with ``log=False``."""

from __future__ import annotations

import time
import uuid

from django.conf import settings

from chatbot_training import replicas
from search import cache
from search.arguments import SearchArguments
from search.selectors import Hit, chunk_cosines, content_caught_up, keyword_hits, query_lexemes
from search.services.cached import CachedSearch, cached_search_build, search_cached
from search.services.logs import search_logged
from search.services.planning import query_vector
from search.services.ranking import _semantic_search, _term_statistics, auto_semantic_weight, fuse, top_cosine
from search.services.result import SearchResult
from search.services.serving import Serving, assignment_key, serving_for
from tenants.errors import NotFound
from tenants.models import Chatbot
from tenants.principal import SearchPrincipal


def search_run(
    *,
    chatbot: Chatbot,
    args: SearchArguments,
    principal: SearchPrincipal | None = None,
    serving: Serving | None = None,
    log: bool = True,
    use_cache: bool = True,
    checked: CachedSearch | None = None,
) -> SearchResult:
    """Runs one search and logs it, in the chatbot's tenant scope. ``args.weight`` (hybrid only):
    0 = keyword only, 1 = vectors only, ``None`` = chosen per query (``auto_semantic_weight``).
    ``principal``: who asked (the log row's key or user; None for internal callers);
    ``serving``: what ``serving_for`` said (the caller asked already, with the same assignment);
    ``checked``: the search as the caller built it and found no cached answer for a moment ago
    (``search_answer``), so it is neither built nor read again."""
    if principal is not None and chatbot.tenant_id != principal.tenant_id:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    began = time.perf_counter()
    serving = serving or serving_for(
        chatbot,
        assignment=assignment_key(query=args.query, user_id=args.end_user, conversation_id=args.conversation_id),
    )
    request = checked or cached_search_build(chatbot=chatbot, args=args, serving=serving, principal=principal)
    if use_cache and checked is None:
        cached, _ = search_cached(request, began=began, log=log)
        if cached is not None:
            return cached
    space, plan, mode, max_results = serving.space, request.plan, args.mode, args.max_results
    # Read from a replica only once it has replayed this content version: the answer, and the
    # cache entry keyed on that version, then hold the newest content (else from the primary).
    with replicas.caught_up(content_caught_up(chatbot_id=chatbot.pk, content_version=chatbot.content_version)):
        weight = args.weight
        strategy = ""
        semantic: list[Hit] = []
        keyword: list[Hit] = []
        vector = None
        fetch = max_results if mode == "semantic" else max(max_results * 4, 40)
        if mode in ("semantic", "hybrid"):
            vector = query_vector(space, plan)
            semantic, strategy = _semantic_search(
                space=space.store,
                chatbot=chatbot,
                vector=vector,
                limit=fetch,
                filters=args.filters,
                ef_search=serving.ef_search,  # the chatbot's tuning (search/services/optimize/), if any
                exact_max=serving.exact_max,
            )
        if mode in ("keyword", "hybrid"):
            stats, frequencies = _term_statistics(chatbot, query_lexemes(plan.effective_query))
            keyword = keyword_hits(
                chatbot_id=chatbot.pk,
                query=plan.effective_query,
                limit=fetch,
                filters=args.filters,
                stats=stats,
                frequencies=frequencies,
            )
        if mode == "semantic":
            results = semantic
        elif mode == "keyword":
            results = keyword[:max_results]
        else:
            if weight is None:
                weight = auto_semantic_weight(semantic, keyword, serving.keyword_factor)
            known = {hit.chunk_id for hit in semantic}
            cosines = chunk_cosines(
                space=space.store, chunk_ids=[h.chunk_id for h in keyword if h.chunk_id not in known], vector=vector
            )
            results = fuse(semantic, keyword, limit=fetch, semantic_weight=weight, cosines=cosines)
        if args.threshold > 0 and mode != "keyword":
            results = [h for h in results if h.score is not None and h.score >= args.threshold]
    results = results[:max_results]
    if use_cache:
        cache.set_json(
            request.key,
            # vars(), not asdict(): a hit's fields are plain JSON values, and asdict's deep copy of
            # each metadata dict cost 0.8 ms a search
            {"results": [vars(h) for h in results], "strategy": strategy, "weight": weight},
            settings.SEARCH_RESULTS_CACHE_TTL,
        )
    took_ms = round((time.perf_counter() - began) * 1000, 2)
    query_id = uuid.uuid4()
    if log:
        top = top_cosine(results, mode)
        embedding = None
        if not results or (top is not None and top < settings.SEARCH_LOW_SCORE):  # a gap keeps its vector
            embedding = vector if vector is not None else query_vector(space, plan)
        search_logged(
            **request.log_fields(query_id),
            results=results,
            took_ms=took_ms,
            cache_hit=False,
            strategy=strategy,
            embedding=embedding,
        )
    return SearchResult(
        results=results,
        took_ms=took_ms,
        embedding_space=space.key,
        mode=mode,
        query_id=query_id,
        effective_query=plan.effective_query,
        cache_hit=False,
        strategy=strategy,
        semantic_weight=weight if mode == "hybrid" else None,
        variant=serving.variant,
    )
