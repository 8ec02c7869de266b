"""Every write of the knowledge app, a package by concern:

- ``spaces``: embedding spaces a chatbot holds vectors in; backfilling and activating one;
- ``uploads``: uploads, reprocessing, deleting documents;
- ``jobs``: the ingestion job's state machine (enqueue on commit, lease, heartbeat, sweeper);
- ``ingestion``: the pipeline a claimed job runs (parse, chunk, store, embed, finish);
- ``embedding``: storing vectors batch by batch; ``refresh``: re-embedding what changed;
- ``indexes``: per-chatbot HNSW indexes.
"""

from knowledge.services.embedding import embed_batches
from knowledge.services.indexes import vector_index_wanted, vector_indexes_optimize
from knowledge.services.ingestion import ingestion_job_run
from knowledge.services.jobs import (
    LeaseLost,
    Pulse,
    ingestion_job_chatbot_id,
    ingestion_job_release,
    ingestion_job_tenant_id,
    ingestion_jobs_sweep,
)
from knowledge.services.refresh import chunk_embeddings_refresh, stored_chunk_context
from knowledge.services.spaces import (
    chatbot_space_activate,
    chatbot_space_add,
    chatbot_space_ensure_active,
    chatbot_space_test_begin,
    chatbot_space_test_end,
    chunk_embeddings_backfill,
    embedding_space_create_version,
    embedding_space_get_or_create,
    ingestion_spaces,
)
from knowledge.services.uploads import (
    UploadResult,
    document_create,
    document_delete,
    document_reprocess,
    ensure_upload_allowed,
)

__all__ = [
    "LeaseLost",
    "Pulse",
    "UploadResult",
    "chatbot_space_activate",
    "chatbot_space_add",
    "chatbot_space_ensure_active",
    "chatbot_space_test_begin",
    "chatbot_space_test_end",
    "chunk_embeddings_backfill",
    "chunk_embeddings_refresh",
    "document_create",
    "document_delete",
    "document_reprocess",
    "embed_batches",
    "embedding_space_create_version",
    "embedding_space_get_or_create",
    "ensure_upload_allowed",
    "ingestion_job_chatbot_id",
    "ingestion_job_release",
    "ingestion_job_run",
    "ingestion_job_tenant_id",
    "ingestion_jobs_sweep",
    "ingestion_spaces",
    "stored_chunk_context",
    "vector_index_wanted",
    "vector_indexes_optimize",
]
