"""One tenant's share of the server: what the operator endpoints answer to a tenant's key or
an owner/admin session (staff also get the whole server, see ``system`` and ``database``)."""

from __future__ import annotations

from django.apps import apps
from django.db import connection

from knowledge.vectors import chatbot_index_name
from monitoring.figures.activity import content_figures, job_backlog
from tenants.models import Chatbot, Tenant


def vectors_by_space(*, tenant: Tenant) -> list[dict]:
    """The tenant's vectors per chatbot and embedding space, with their storage (pgvector keeps
    4 bytes per dimension plus 8) and the chatbot's own HNSW index when it has one."""
    with connection.cursor() as cursor:  # row-level security: the tenant's rows only
        cursor.execute(
            """
            SELECT e.chatbot_id, e.space_id, s.provider || ':' || s.model_name || '@' || s.version, s.dimensions,
                   count(*)
            FROM knowledge_chunkembedding e JOIN knowledge_embeddingspace s ON s.id = e.space_id
            WHERE e.tenant_id = %s GROUP BY 1, 2, 3, 4 ORDER BY 1, 2
            """,
            [tenant.pk],
        )
        rows = cursor.fetchall()
        names = [chatbot_index_name(space_id=space, chatbot_id=bot) for bot, space, *_ in rows]
        cursor.execute(
            "SELECT c.relname, pg_relation_size(c.oid), i.indisvalid FROM pg_class c "
            "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = ANY(%s)",
            [names],
        )
        indexes = {name: (size, valid) for name, size, valid in cursor.fetchall()}
    found = []
    for (chatbot_id, space_id, space, dimensions, count), name in zip(rows, names):
        index = indexes.get(name)
        found.append({
            "chatbot_id": chatbot_id,
            "space_id": space_id,
            "space": space,
            "vectors": count,
            "vector_bytes": count * (4 * dimensions + 8),
            "own_index": None if index is None else {"name": name, "bytes": index[0], "valid": index[1]},
        })  # fmt: skip
    return found


def index_recall(*, tenant: Tenant) -> dict[int, dict]:
    """Per chatbot: the recall the index autopilot last measured (when it ran)."""
    try:
        tuning = apps.get_model("search", "SearchTuning")
    except LookupError:
        return {}
    rows = tuning.objects.for_tenant(tenant).values(
        "chatbot_id", "ef_search", "measured_recall", "recall_target", "measured_at"
    )
    return {row.pop("chatbot_id"): row for row in rows}


def tenant_share(*, tenant: Tenant) -> dict:
    vectors = vectors_by_space(tenant=tenant)
    content = content_figures(tenant=tenant)
    return {
        "tenant_id": tenant.pk,
        "chatbots": Chatbot.objects.for_tenant(tenant).count(),
        "documents": content["documents"],
        "documents_by_status": content["by_status"],
        "chunks": content["chunks"],
        "upload_bytes": content["bytes"],
        "vectors": sum(row["vectors"] for row in vectors),
        "vector_bytes": sum(row["vector_bytes"] for row in vectors),
        "index_bytes": sum(row["own_index"]["bytes"] for row in vectors if row["own_index"]),
        "vector_spaces": vectors,
        "index_recall": index_recall(tenant=tenant),
        **job_backlog(tenant=tenant),
    }
