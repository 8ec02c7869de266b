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
