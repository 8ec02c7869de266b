"""All Prometheus metrics are defined here (exported at /metrics by django-prometheus)."""

from prometheus_client import Counter, Histogram

TASK_DURATION = Histogram(
    "chatbot_task_duration_seconds",
    "Celery task run time.",
    ["task", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
TASKS = Counter("chatbot_tasks_total", "Celery tasks finished.", ["task", "outcome"])
UPLOADS_REJECTED = Counter("chatbot_uploads_rejected_total", "Uploads refused before storing.", ["reason"])


# --- Gauges computed when /metrics is scraped -------------------------------------------------
# Counters and histograms above are written by the process that counts (multiprocess files); the
# state below is read from the database and the broker by the process that answers the scrape,
# at most every METRICS_GAUGES_TTL seconds. Labels stay bounded: queue names, document statuses,
# embedding-space keys, and chatbot ids of at most METRICS_MAX_CHATBOTS chatbots (the largest by
# vectors); never query text or request ids.


class StateCollector:
    def __init__(self):
        self._cached: tuple[float, list] = (0.0, [])

    def forget(self) -> None:
        """Read the state afresh at the next scrape (tests)."""
        self._cached = (0.0, [])

    def collect(self):
        import time

        from django.conf import settings

        now = time.monotonic()
        if now >= self._cached[0]:
            self._cached = (now + settings.METRICS_GAUGES_TTL, self._families())
        return iter(self._cached[1])

    def _families(self) -> list:
        from django.conf import settings
        from django.db.models import Count
        from prometheus_client.core import GaugeMetricFamily

        from knowledge.models import ChunkEmbedding, Document, EmbeddingSpace
        from monitoring.figures.system import queue_depths
        from tenants.scoping import cross_tenant_context
        from training.models import ModelVersion

        queues = GaugeMetricFamily("chatbot_queue_depth", "Messages waiting per Celery queue.", labels=["queue"])
        for name, depth in queue_depths().items():
            if depth is not None:
                queues.add_metric([name], depth)
        documents = GaugeMetricFamily("chatbot_documents", "Documents by status, all tenants.", labels=["status"])
        vectors = GaugeMetricFamily("chatbot_vectors", "Stored vectors per embedding space.", labels=["space"])
        recall = GaugeMetricFamily(
            "chatbot_index_recall", "Recall@10 the index autopilot last measured.", labels=["chatbot"]
        )
        ndcg = GaugeMetricFamily(
            "chatbot_evaluation_ndcg", "nDCG@10 on held-out questions.", labels=["chatbot", "version", "status"]
        )
        jobs = GaugeMetricFamily(
            "chatbot_training_jobs_recent", "Training jobs created in the last 24 hours, by status.", labels=["status"]
        )
        with cross_tenant_context("metrics scrape"):
            from datetime import timedelta

            from django.utils import timezone

            from training.models import TrainingJob

            recent = TrainingJob.objects.filter(created_at__gte=timezone.now() - timedelta(hours=24))
            by_status = dict(recent.values_list("status").annotate(n=Count("pk")).order_by())
            for status in TrainingJob.Status.values:
                jobs.add_metric([status], by_status.get(status, 0))
            counts = dict(Document.objects.values_list("status").annotate(n=Count("pk")).order_by())
            for status in Document.Status.values:
                documents.add_metric([status], counts.get(status, 0))
            per_space = dict(ChunkEmbedding.objects.values_list("space_id").annotate(n=Count("pk")).order_by())
            keys = {space.pk: space.key for space in EmbeddingSpace.objects.filter(pk__in=per_space)}
            biggest = sorted(per_space.items(), key=lambda item: -item[1])[: settings.METRICS_MAX_CHATBOTS]
            for space_id, count in biggest:
                vectors.add_metric([keys.get(space_id, str(space_id))], count)
            largest = [
                row["chatbot_id"]
                for row in ChunkEmbedding.objects.values("chatbot_id")
                .annotate(n=Count("pk"))
                .order_by("-n")[: settings.METRICS_MAX_CHATBOTS]
            ]
            try:
                from django.apps import apps

                tuning = apps.get_model("search", "SearchTuning")
                for chatbot_id, measured in tuning.objects.filter(chatbot_id__in=largest).values_list(
                    "chatbot_id", "measured_recall"
                ):
                    if measured is not None:
                        recall.add_metric([str(chatbot_id)], measured)
            except LookupError:
                pass
            for version in ModelVersion.objects.filter(
                chatbot_id__in=largest, status__in=[ModelVersion.Status.ACTIVE, ModelVersion.Status.TESTING]
            ).only("chatbot_id", "number", "status", "metrics"):
                value = (version.metrics or {}).get("candidate", {}).get("ndcg_10")
                if value is not None:
                    ndcg.add_metric([str(version.chatbot_id), str(version.number), version.status], value)
            from training.models import Evaluation

            latest = (
                Evaluation.objects.filter(chatbot_id__in=largest, ndcg_10__isnull=False)
                .order_by("chatbot_id", "-measured_at")
                .distinct("chatbot_id")
                .select_related("version")
            )
            for row in latest:  # the nightly figure of whatever serves (version "0": the base model)
                number = str(row.version.number) if row.version is not None else "0"
                ndcg.add_metric([str(row.chatbot_id), number, "nightly"], row.ndcg_10)
        return [queues, documents, vectors, recall, ndcg, jobs]


STATE = StateCollector()


def exposition() -> tuple[bytes, str]:
    """The /metrics page: every process's counters and histograms, plus the state gauges."""
    import os

    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(STATE)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY) + generate_latest(_state_only()), CONTENT_TYPE_LATEST


def _state_only():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(STATE)
    return registry
