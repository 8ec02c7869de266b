"""What one search answers, whichever path asked and however it is rendered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from search.selectors import Hit


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
    variant: str | None = None  # while an A/B test runs: "control" or "variant"
