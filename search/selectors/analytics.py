"""Reads of the search log: analytics, knowledge gaps, the export, the gaps' query vectors."""

from __future__ import annotations

from datetime import UTC, timedelta

from django.db import transaction
from django.utils import timezone

from chatbot_training import replicas


def search_log_queryset(*, tenant, chatbot_id: int, days: int):
    from search.models import SearchLog

    since = timezone.now() - timedelta(days=days)
    return SearchLog.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)


def search_analytics(*, tenant, chatbot_id: int, days: int, low_score: float) -> dict:
    """Volume, latency percentiles, cache hit rate, gaps, top queries, feedback and a daily series."""
    from search.models import SearchBlend, SearchFeedback

    since = timezone.now() - timedelta(days=days)
    gap = "(result_count = 0 OR (top_score IS NOT NULL AND top_score < %(low)s))"
    args = {"tenant": tenant.pk, "chatbot": chatbot_id, "since": since, "low": low_score}
    scope = "tenant_id = %(tenant)s AND chatbot_id = %(chatbot)s AND created_at >= %(since)s"

    def _read(connection):  # one snapshot for the three figures, on a read replica when there is one
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT count(*),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY took_ms),
                       avg(cache_hit::int), count(*) FILTER (WHERE result_count = 0),
                       count(*) FILTER (WHERE result_count > 0 AND top_score < %(low)s), avg(top_score)
                FROM search_searchlog WHERE {scope}
                """,
                args,
            )
            total, p50, p95, hit_rate, zero, low, mean_top = cursor.fetchone()
            cursor.execute(
                f"""
                SELECT (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date AS day, count(*),
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY took_ms),
                       avg((result_count = 0)::int), avg(cache_hit::int), count(*) FILTER (WHERE {gap})
                FROM search_searchlog WHERE {scope} GROUP BY 1 ORDER BY 1
                """,
                args,
            )
            by_day = {row[0]: row for row in cursor.fetchall()}
            cursor.execute(
                f"""
                SELECT lower(query), count(*), avg(top_score), avg(result_count), max(created_at)
                FROM search_searchlog WHERE {scope}
                GROUP BY 1 ORDER BY 2 DESC, 5 DESC LIMIT 10
                """,
                args,
            )
            top_queries = [
                {"query": q, "count": n, "mean_top_score": _round(s), "mean_results": _round(r), "last_seen": t}
                for q, n, s, r, t in cursor.fetchall()
            ]
            return total, p50, p95, hit_rate, zero, low, mean_top, by_day, top_queries

    total, p50, p95, hit_rate, zero, low, mean_top, by_day, top_queries = replicas.read(_read)
    blend = SearchBlend.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id).first()
    feedback = SearchFeedback.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)
    feedback_count = feedback.count()
    helpful = feedback.filter(helpful=True).count()
    searches_with_feedback = feedback.values("search_id").distinct().count()
    series = []
    today = timezone.now().astimezone(UTC).date()
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        row = by_day.get(day)
        series.append(
            {
                "date": day.isoformat(),
                "searches": row[1] if row else 0,
                "p50_ms": _round(row[2]) if row else None,
                "p95_ms": _round(row[3]) if row else None,
                "zero_result_rate": _round(row[4]) if row else None,
                "cache_hit_rate": _round(row[5]) if row else None,
                "gaps": row[6] if row else 0,
            }
        )
    return {
        "chatbot_id": chatbot_id,
        "days": days,
        "searches": total,
        "latency_ms": {"p50": _round(p50), "p95": _round(p95)},
        "cache_hit_rate": _round(hit_rate),
        "zero_result_queries": zero,
        "zero_result_rate": _round(zero / total) if total else None,
        "low_score_queries": low,
        "low_score_threshold": low_score,
        "mean_top_score": _round(mean_top),
        "top_queries": top_queries,
        "feedback": {
            "count": feedback_count,
            "helpful": helpful,
            "not_helpful": feedback_count - helpful,
            "helpful_rate": _round(helpful / feedback_count) if feedback_count else None,
            "feedback_rate": _round(searches_with_feedback / total) if total else None,
        },
        "hybrid_blend": {  # what all of the chatbot's feedback taught its hybrid search (not only these days)
            "keyword_votes": blend.keyword_votes if blend else 0,
            "vector_votes": blend.vector_votes if blend else 0,
            "keyword_factor": round(blend.keyword_factor, 3) if blend else 1.0,
        },
        "daily": series,
    }


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def knowledge_gaps(
    *, tenant, chatbot_id: int, days: int, low_score: float, similarity: float = 0.75, limit: int = 500
) -> list[dict]:
    """Zero-result and low-score queries, grouped greedily by the cosine similarity of their
    embeddings (stored on the log row for gaps only), biggest group first."""
    import numpy as np
    from django.db.models import Q

    rows = list(
        search_log_queryset(tenant=tenant, chatbot_id=chatbot_id, days=days)
        .filter(Q(result_count=0) | Q(top_score__lt=low_score))
        .order_by("-created_at")
        .values_list("query", "top_score", "created_at", "query_embedding", "result_count")[:limit]
    )
    groups: list[dict] = []
    centroids: list = []
    for query, score, created, embedding, count in rows:
        vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
        target = None
        if vector is not None and centroids:
            sims = [float(np.dot(vector, c)) if c is not None else -1.0 for c in centroids]
            best = int(np.argmax(sims))
            if sims[best] >= similarity:
                target = best
        if target is None:
            for i, group in enumerate(groups):  # same words, no embedding (e.g. logged before)
                if query.casefold() in group["_texts"]:
                    target = i
                    break
        if target is None:
            groups.append({"_texts": {}, "count": 0, "zero_results": 0, "best_score": None, "last_seen": created})
            centroids.append(vector)  # the group's first query leads it
            target = len(groups) - 1
        group = groups[target]
        group["count"] += 1
        group["zero_results"] += int(count == 0)
        group["_texts"].setdefault(query.casefold(), [query, 0])[1] += 1
        if score is not None:
            group["best_score"] = max(score, group["best_score"] or 0.0)
        group["last_seen"] = max(group["last_seen"], created)
    out = []
    for group in groups:
        texts = sorted(group.pop("_texts").values(), key=lambda item: -item[1])
        out.append(
            {
                "query": texts[0][0],
                "examples": [text for text, _ in texts[:5]],
                "count": group["count"],
                "zero_results": group["zero_results"],
                "best_score": _round(group["best_score"]),
                "last_seen": group["last_seen"],
            }
        )
    return sorted(out, key=lambda g: (-g["count"], g["query"]))


SEARCH_LOG_EXPORT_COLUMNS = [
    "created_at", "query_id", "source", "api_key", "user", "query", "effective_query", "mode", "result_count",
    "top_score", "took_ms", "cache_hit", "strategy", "embedding_space",
]  # fmt: skip


def search_log_export_rows(*, tenant, chatbot_id: int, days: int, batch: int = 2000):
    """The chatbot's searches of the last ``days`` days, oldest first, as rows of
    ``SEARCH_LOG_EXPORT_COLUMNS``, read in batches by (created_at, id): each batch is one short
    query, so a long export holds no cursor or transaction open between batches."""
    from django.db.models import Q

    from search.models import SearchLog

    since = timezone.now() - timedelta(days=days)
    logs = SearchLog.objects.for_tenant(tenant).filter(chatbot_id=chatbot_id, created_at__gte=since)
    after = None
    while True:
        page = logs.filter(Q(created_at__gt=after[0]) | Q(created_at=after[0], id__gt=after[1])) if after else logs
        rows = list(
            page.order_by("created_at", "id").values_list(
                "created_at", "query_id", "source", "api_key__prefix", "user__username", "query", "effective_query",
                "mode", "result_count", "top_score", "took_ms", "cache_hit", "strategy", "embedding_space", "id",
            )[:batch]
        )  # fmt: skip
        for row in rows:
            yield [row[0].isoformat(), str(row[1]), *row[2:-1]]
        if len(rows) < batch:
            return
        after = (rows[-1][0], rows[-1][-1])


def gap_query_vectors(
    *, tenant, chatbot_id: int, space_key: str, days: int, low_score: float, limit: int = 200
) -> list[tuple[str, list]]:
    """(query, query vector) of the chatbot's recent distinct zero-result and low-score searches
    served by ``space_key`` (the log keeps a gap's vector), newest first."""
    from django.db.models import Q

    rows = (
        search_log_queryset(tenant=tenant, chatbot_id=chatbot_id, days=days)
        .filter(Q(result_count=0) | Q(top_score__lt=low_score), embedding_space=space_key)
        .exclude(query_embedding=None)
        .order_by("-created_at")
        .values_list("query", "query_embedding")[: limit * 5]
    )
    seen, out = set(), []
    for query, vector in rows:
        if query.casefold() in seen:
            continue
        seen.add(query.casefold())
        out.append((query, list(vector)))
        if len(out) >= limit:
            break
    return out
