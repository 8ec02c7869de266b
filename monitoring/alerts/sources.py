"""The metrics a rule may watch: name -> description, unit, scopes allowed, and the function that
measures it for one target over a window (a float, or None when there is nothing to measure).

System and database figures come from ``monitoring.figures`` (the metrics pages' own functions);
the small functions here measure what those do not (a window with an end, the previous window).
A value of None never breaches a rule: an alert whose figure has no data resolves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Aggregate, Count, FloatField, Q

from monitoring.figures import database, system

logger = logging.getLogger(__name__)

TENANT = "tenant"
CHATBOT = "chatbot"
GLOBAL = "global"

# Search rates need this many searches in the window before they mean anything.
MIN_SEARCHES = 10


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def previous(self) -> Window:
        return Window(self.since - (self.until - self.since), self.since)


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    unit: str
    scopes: tuple[str, ...]
    measure: Callable  # (rule, target, window) -> float | None; target: a Chatbot, a Tenant or None


def _owner(rule, target) -> dict:
    """ORM filter for the rule's tenant and, for a chatbot target, that chatbot."""
    from tenants.models import Chatbot

    if isinstance(target, Chatbot):
        return {"tenant_id": target.tenant_id, "chatbot_id": target.pk}
    return {"tenant_id": rule.tenant_id}


# --- search ---------------------------------------------------------------------------------


def _searches(rule, target, window: Window):
    from search.models import SearchLog

    return SearchLog.objects.filter(**_owner(rule, target), created_at__gte=window.since, created_at__lt=window.until)


class _P95(Aggregate):
    """The 95th percentile (linear interpolation, as numpy's default), computed by PostgreSQL."""

    template = "percentile_cont(0.95) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def search_p95_ms(rule, target, window: Window) -> float | None:
    figures = _searches(rule, target, window).aggregate(n=Count("pk"), p95=_P95("took_ms"))
    return None if figures["n"] < MIN_SEARCHES else float(figures["p95"])


def _zero_rate(rule, target, window: Window) -> float | None:
    counts = _searches(rule, target, window).aggregate(n=Count("pk"), zero=Count("pk", filter=Q(result_count=0)))
    if counts["n"] < MIN_SEARCHES:
        return None
    return counts["zero"] / counts["n"]


def search_zero_result_rate(rule, target, window: Window) -> float | None:
    return _zero_rate(rule, target, window)


def search_zero_result_rise(rule, target, window: Window) -> float | None:
    now, before = _zero_rate(rule, target, window), _zero_rate(rule, target, window.previous)
    if now is None or before is None:
        return None
    return now - before


# --- training and content -------------------------------------------------------------------


def training_failure_rate(rule, target, window: Window) -> float | None:
    from training.models import TrainingJob

    counts = TrainingJob.objects.filter(
        **_owner(rule, target), finished_at__gte=window.since, finished_at__lt=window.until
    ).aggregate(
        done=Count("pk", filter=Q(status__in=["succeeded", "failed"])), failed=Count("pk", filter=Q(status="failed"))
    )
    return counts["failed"] / counts["done"] if counts["done"] else None


def _documents(rule, target, window: Window):
    from knowledge.models import Document

    return Document.objects.filter(**_owner(rule, target), created_at__gte=window.since, created_at__lt=window.until)


def upload_failure_rate(rule, target, window: Window) -> float | None:
    counts = _documents(rule, target, window).aggregate(
        done=Count("pk", filter=Q(status__in=["ready", "failed"])), failed=Count("pk", filter=Q(status="failed"))
    )
    return counts["failed"] / counts["done"] if counts["done"] else None


def documents_with_warnings(rule, target, window: Window) -> float | None:
    documents = _documents(rule, target, window).filter(quality__has_key="warnings").exclude(quality__warnings=[])
    return float(documents.count())


# --- model quality --------------------------------------------------------------------------


def retrieval_ndcg_drop(rule, target, window: Window) -> float | None:
    """How far the nightly evaluation's nDCG@10 fell below the deployed version's own."""
    try:
        from training.selectors import evaluation_latest
    except ImportError:
        return None
    latest = evaluation_latest(tenant=target.tenant, chatbot=target)
    if not latest or latest.get("ndcg") is None or latest.get("deployed_ndcg") is None:
        return None
    return float(latest["deployed_ndcg"]) - float(latest["ndcg"])


def _tuning(target):
    try:
        from search.models import SearchTuning
    except ImportError:  # the optimizer's tuning is not there: nothing to measure
        return None
    return SearchTuning.objects.filter(tenant_id=target.tenant_id, chatbot_id=target.pk).first()


def index_recall(rule, target, window: Window) -> float | None:
    """The vector index's measured recall@10 (the optimizer's ``SearchTuning``) for the chatbot."""
    value = getattr(_tuning(target), "measured_recall", None)
    return None if value is None else float(value)


def index_recall_shortfall(rule, target, window: Window) -> float | None:
    """How far the measured recall is below the chatbot's own recall target (negative: above)."""
    tuning = _tuning(target)
    if tuning is None or tuning.measured_recall is None or tuning.recall_target is None:
        return None
    return float(tuning.recall_target) - float(tuning.measured_recall)


# --- system and database (global rules, staff only) -----------------------------------------


def disk_used_percent(rule, target, window: Window) -> float | None:
    return float(system.disk_usage()["used_percent"])


def memory_used_percent(rule, target, window: Window) -> float | None:
    return float(system.memory_usage()["used_percent"])


def queue_backlog(rule, target, window: Window) -> float | None:
    depths = [n for n in system.queue_depths().values() if n is not None]
    return float(sum(depths)) if depths else None


def db_connections(rule, target, window: Window) -> float | None:
    """Connections in use as a percentage of max_connections."""
    most = database.max_connections()
    return 100.0 * sum(database.connections_by_state().values()) / most if most else None


def db_cache_hit_ratio(rule, target, window: Window) -> float | None:
    return database.cache_hit_ratio()


def db_dead_tuple_ratio(rule, target, window: Window) -> float | None:
    return database.dead_tuple_ratio()


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("training_failure_rate", "Share of training jobs finished in the window that failed", "ratio",
               (TENANT, CHATBOT), training_failure_rate),
        Metric("search_p95_ms", "95th percentile search latency in the window (at least 10 searches)", "ms",
               (TENANT, CHATBOT), search_p95_ms),
        Metric("search_zero_result_rate", "Share of searches in the window with no result", "ratio",
               (TENANT, CHATBOT), search_zero_result_rate),
        Metric("search_zero_result_rise", "Zero-result rate in the window minus the previous window's", "ratio",
               (TENANT, CHATBOT), search_zero_result_rise),
        Metric("upload_failure_rate", "Share of uploads in the window that failed", "ratio",
               (TENANT, CHATBOT), upload_failure_rate),
        Metric("documents_with_warnings", "Documents uploaded in the window with quality warnings", "documents",
               (TENANT, CHATBOT), documents_with_warnings),
        Metric("retrieval_ndcg_drop", "Deployed version's nDCG@10 minus the latest nightly evaluation's", "nDCG",
               (CHATBOT,), retrieval_ndcg_drop),
        Metric("index_recall", "Measured recall@10 of the chatbot's vector index", "ratio", (CHATBOT,), index_recall),
        Metric("index_recall_shortfall", "The chatbot's recall target minus its measured recall", "ratio",
               (CHATBOT,), index_recall_shortfall),
        Metric("disk_used_percent", "Disk used on the data directory", "%", (GLOBAL,), disk_used_percent),
        Metric("memory_used_percent", "Memory used on the host", "%", (GLOBAL,), memory_used_percent),
        Metric("queue_backlog", "Celery messages waiting in the queues", "messages", (GLOBAL,), queue_backlog),
        Metric("db_connections", "Database connections as a percentage of max_connections", "%",
               (GLOBAL,), db_connections),
        Metric("db_cache_hit_ratio", "Database buffer cache hit ratio", "ratio", (GLOBAL,), db_cache_hit_ratio),
        Metric("db_dead_tuple_ratio", "Largest dead-row share of a table (1000+ rows)", "ratio",
               (GLOBAL,), db_dead_tuple_ratio),
    ]
}  # fmt: skip


def window_for(rule, now: datetime) -> Window:
    return Window(now - timedelta(minutes=rule.window_minutes), now)
