"""What every search leaves behind: its metrics and its queued log row."""

from __future__ import annotations

import numpy as np
from django.utils import timezone

from search.filters import SearchFilters
from search.logbuffer import search_log_enqueue
from search.metrics import SEARCH_LATENCY, SEARCHES, ZERO_RESULTS
from search.selectors import (
    Hit,
)
from search.services.planning import QueryPlan
from search.services.ranking import top_cosine


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
    embedding, api_key_id: int | None, user_id: int | None, source: str, variant: str | None = None,
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
        "variant": variant or "",
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
