"""Prometheus metrics of search (exported at /metrics with the rest)."""

from prometheus_client import Counter, Histogram

SEARCHES = Counter("chatbot_searches_total", "Searches served.", ["mode", "cached", "strategy"])
SEARCH_LATENCY = Histogram(
    "chatbot_search_seconds",
    "Search time inside the service (embedding, SQL, fusion; not HTTP).",
    ["mode", "cached"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
CACHE_EVENTS = Counter("chatbot_search_cache_total", "Search cache lookups.", ["cache", "outcome"])
ZERO_RESULTS = Counter("chatbot_search_zero_results_total", "Searches that found nothing.", ["mode"])
