"""Search's reads. A package by concern:

- ``hits``: the rows a search returns (``Hit``) and their columns;
- ``vectors``: search-time vector SQL (exact or HNSW) and the replica freshness check;
- ``keywords``: search-time keyword SQL (BM25, the trigram fallback);
- ``analytics``: the search log (analytics, knowledge gaps, the export);
- ``analysis``: the chatbot's vectors for the embedding-space analysis;
- ``optimize``: the optimizer's reads (sample vectors, table and index figures, runs).

The search-time SQL and the analytics run on a read replica when there is one
(``chatbot_training/replicas.py``).
"""

from search.selectors.analysis import chunk_vector_count, chunk_vectors
from search.selectors.analytics import (
    SEARCH_LOG_EXPORT_COLUMNS,
    gap_query_vectors,
    knowledge_gaps,
    search_analytics,
    search_log_export_rows,
    search_log_queryset,
)
from search.selectors.hits import NO_FILTERS, RESULT_COLUMNS, Hit
from search.selectors.keywords import (
    BM25_B,
    BM25_K1,
    TextStats,
    document_frequencies,
    keyword_hits,
    query_lexemes,
    text_stats,
)
from search.selectors.optimize import (
    VECTOR_TABLES,
    chunk_vectors_sample,
    index_bytes,
    optimization_run_get,
    optimization_runs,
    search_tuning_get,
    table_tuples,
    vector_count,
)
from search.selectors.vectors import (
    candidate_count,
    chunk_cosines,
    content_caught_up,
    semantic_hits,
    semantic_plan,
    semantic_query,
)

__all__ = [
    "BM25_B", "BM25_K1", "NO_FILTERS", "RESULT_COLUMNS", "SEARCH_LOG_EXPORT_COLUMNS", "VECTOR_TABLES", "Hit",
    "TextStats", "candidate_count", "chunk_cosines", "chunk_vector_count", "chunk_vectors", "chunk_vectors_sample",
    "content_caught_up", "document_frequencies", "gap_query_vectors", "index_bytes", "keyword_hits",
    "knowledge_gaps", "optimization_run_get", "optimization_runs", "query_lexemes", "search_analytics",
    "search_log_export_rows", "search_log_queryset", "search_tuning_get", "semantic_hits", "semantic_plan",
    "semantic_query", "table_tuples", "text_stats", "vector_count",
]  # fmt: skip
