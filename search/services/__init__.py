"""Search over a chatbot's ready chunks: semantic, keyword, or both fused; conversation-aware,
filtered, cached in Redis and logged. A package by concern:

- ``planning``: what a search embeds and matches (the question, its conversation, the vector);
- ``ranking``: exact or HNSW vector search, BM25 statistics, the hybrid blend;
- ``serving``: which embedding space (model version) serves a chatbot's searches;
- ``answer``: ``search_answer``, the one pipeline every entry point calls (access, throttle,
  cache, run, log, touch);
- ``cached``: a search as its cache key and log row see it, and the cached-answer branch;
- ``run``: one search's work start to end (``search_run``), and ``result``: what it answers;
- ``logs``: metrics and the queued log row of every search;
- ``feedback``: feedback on results, and the blend it teaches.
"""

from search.services.answer import search_access_check, search_answer
from search.services.cached import CachedSearch, cached_search_build, results_cache_key, search_cached
from search.services.feedback import search_feedback_create
from search.services.logs import result_fields, search_count, search_log_row, search_logged
from search.services.planning import (
    MAX_CONVERSATION_TURNS,
    MAX_QUERY_CHARS,
    MODES,
    QueryPlan,
    Turn,
    query_plan_build,
    query_vector,
)
from search.services.ranking import _semantic_search, auto_semantic_weight, fuse, top_cosine
from search.services.result import SearchResult
from search.services.run import search_run
from search.services.serving import (
    Serving,
    assignment_bucket,
    assignment_key,
    blend_keyword_factor,
    serving_for,
    serving_forget,
)

__all__ = [
    "MAX_CONVERSATION_TURNS",
    "MAX_QUERY_CHARS",
    "MODES",
    "CachedSearch",
    "QueryPlan",
    "SearchResult",
    "Serving",
    "Turn",
    "_semantic_search",
    "auto_semantic_weight",
    "blend_keyword_factor",
    "fuse",
    "query_plan_build",
    "query_vector",
    "result_fields",
    "results_cache_key",
    "cached_search_build",
    "search_access_check",
    "search_answer",
    "search_cached",
    "search_count",
    "search_feedback_create",
    "search_log_row",
    "search_logged",
    "search_run",
    "serving_for",
    "assignment_bucket",
    "assignment_key",
    "serving_forget",
    "top_cosine",
]
