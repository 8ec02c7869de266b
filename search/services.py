"""Search over a chatbot's ready chunks: semantic, keyword, or both fused by reciprocal rank."""

from __future__ import annotations

import time
from dataclasses import dataclass

from knowledge.embeddings import provider_for
from knowledge.services import chatbot_space_ensure_active
from search.selectors import Hit, keyword_hits, semantic_hits
from tenants.errors import DomainError, NotFound
from tenants.models import Chatbot, Tenant

MODES = ("semantic", "keyword", "hybrid")
MAX_QUERY_CHARS = 2000
RRF_K = 60


@dataclass
class SearchResult:
    results: list[Hit]
    took_ms: float
    embedding_space: str
    mode: str


def fuse(semantic: list[Hit], keyword: list[Hit], *, limit: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion; each hit keeps its rank in both lists and its cosine similarity."""
    fused: dict[int, Hit] = {}
    for name, hits in (("semantic", semantic), ("keyword", keyword)):
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.chunk_id, hit)
            entry.ranks[name] = rank
    for hit in fused.values():
        hit.ranks["fused_score"] = sum(1 / (k + r) for n, r in hit.ranks.items() if n != "fused_score")
    ordered = sorted(fused.values(), key=lambda h: -h.ranks["fused_score"])
    return ordered[:limit]


def search_run(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    query: str,
    max_results: int = 5,
    similarity_threshold: float = 0.0,
    mode: str = "semantic",
) -> SearchResult:
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    query = (query or "").strip()
    if not query:
        raise DomainError("query must not be empty.", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise DomainError(f"query must be at most {MAX_QUERY_CHARS} characters.", field="query")
    if mode not in MODES:
        raise DomainError(f"mode must be one of {', '.join(MODES)}.", field="mode")
    began = time.perf_counter()
    space = chatbot_space_ensure_active(chatbot=chatbot).space
    semantic: list[Hit] = []
    keyword: list[Hit] = []
    fetch = max_results if mode == "semantic" else max(max_results * 4, 20)
    if mode in ("semantic", "hybrid"):
        vector = provider_for(space.model_key).embed([query])[0]
        semantic = semantic_hits(space=space, chatbot_id=chatbot.pk, vector=vector, limit=fetch)
    if mode in ("keyword", "hybrid"):
        keyword = keyword_hits(chatbot_id=chatbot.pk, query=query, limit=fetch)
    if mode == "semantic":
        results = [h for h in semantic if h.score >= similarity_threshold]
    elif mode == "keyword":
        results = keyword[:max_results]
    else:
        results = fuse(semantic, keyword, limit=max_results)
    return SearchResult(
        results=results[:max_results],
        took_ms=round((time.perf_counter() - began) * 1000, 2),
        embedding_space=space.key,
        mode=mode,
    )
