"""A search result as the product's own API renders it (``POST /api/search``, hybrid search, the
dashboard playground, the fast path). Other wire formats (OpenAI's, Dify's) render the same
``SearchResult`` in their own presenter."""

from __future__ import annotations


def unit_score(hit) -> float:
    """A hit's cosine as the 0–1 relevance other products' formats expect (OpenAI's, Dify's)."""
    return 0.0 if hit.score is None else round(min(1.0, max(0.0, float(hit.score))), 6)


def hit_payload(hit, mode: str) -> dict:
    body = {
        "chunk_id": hit.chunk_id,
        "document_id": hit.document_id,
        "title": hit.title,
        "content": hit.content,
        "similarity_score": None if hit.score is None else round(hit.score, 6),
        "content_type": hit.content_type,
        "category": hit.category,
        "metadata": hit.metadata,
        "page": hit.page,
        "heading": hit.heading,
        "context": hit.context,
    }
    if mode == "hybrid":
        body["fused_score"] = round(hit.ranks["fused_score"], 6)
        body["semantic_rank"] = hit.ranks.get("semantic")
        body["keyword_rank"] = hit.ranks.get("keyword")
    return body


def search_payload(result) -> dict:
    return {
        "results": [hit_payload(h, result.mode) for h in result.results],
        "query_id": str(result.query_id),
        "took_ms": result.took_ms,
        "embedding_space": result.embedding_space,
        "mode": result.mode,
        "effective_query": result.effective_query,
        "cached": result.cache_hit,
        "semantic_weight": result.semantic_weight,
        "variant": result.variant,
    }
