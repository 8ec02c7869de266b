"""The optimizer's reads (search/services/optimize/): sample vectors, table and index figures, runs."""

from __future__ import annotations

import json

from django.db import connection, transaction

from knowledge.models import EmbeddingSpace


def chunk_vectors_sample(*, space: EmbeddingSpace, chatbot_id: int, count: int) -> list[list[float]]:
    """Up to ``count`` of the chatbot's stored vectors in ``space``, spread over its chunks (a
    fixed pseudo-random order, so two runs measure the same queries): queries for tuning when the
    chatbot has few logged searches."""
    dims = int(space.dimensions)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT e.embedding::vector({dims})::text FROM knowledge_chunkembedding e
            WHERE e.space_id = %s AND e.chatbot_id = %s
            ORDER BY md5(e.chunk_id::text) LIMIT %s
            """,
            [space.pk, chatbot_id, count],
        )
        return [json.loads(row[0]) for row in cursor.fetchall()]


def vector_count(*, space: EmbeddingSpace, chatbot_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM knowledge_chunkembedding WHERE space_id = %s AND chatbot_id = %s",
            [space.pk, chatbot_id],
        )
        return cursor.fetchone()[0]


VECTOR_TABLES = ("knowledge_chunkembedding", "knowledge_chunk")


def table_tuples(*, tables: tuple[str, ...] = VECTOR_TABLES) -> dict[str, dict]:
    """Live and dead tuples, size and last vacuum of each table (``pg_stat_user_tables``, read
    afresh: the statistics snapshot is cleared first)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            """
            SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid),
                   greatest(last_vacuum, last_autovacuum)
            FROM pg_stat_user_tables WHERE relname = ANY(%s)
            """,
            [list(tables)],
        )
        return {
            name: {
                "live_tuples": live,
                "dead_tuples": dead,
                "dead_share": round(dead / (live + 1), 4),
                "total_bytes": size,
                "last_vacuum": vacuumed.isoformat() if vacuumed else None,
            }
            for name, live, dead, size, vacuumed in cursor.fetchall()
        }


def index_bytes(name: str) -> int | None:
    """The size of an index, None if there is no such index."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(to_regclass(%s))", [name])
        size = cursor.fetchone()[0]
        return None if size is None else int(size)


def optimization_runs(*, tenant, chatbot_id: int, limit: int = 20) -> list:
    from search.models import OptimizationRun

    return list(
        OptimizationRun.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).order_by("-created_at", "-id")[:limit]
    )


def optimization_run_get(*, tenant, run_id, api_key=None):
    """The tenant's run (one its key may see), or NotFound."""
    from search.models import OptimizationRun
    from tenants.errors import NotFound
    from tenants.selectors import chatbot_list

    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise NotFound("Optimization run not found.", field="run_id") from None
    run = (
        OptimizationRun.objects.for_tenant(tenant)
        .filter(pk=run_id, chatbot__in=chatbot_list(tenant=tenant, api_key=api_key))
        .first()
    )
    if run is None:
        raise NotFound("Optimization run not found.", field="run_id")
    return run


def search_tuning_get(*, tenant, chatbot_id: int):
    from search.models import SearchTuning

    return SearchTuning.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).first()
