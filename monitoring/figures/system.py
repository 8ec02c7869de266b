"""This host and the Celery workers: psutil and Celery's inspect."""

from __future__ import annotations

import logging
import os
import time

import psutil
from django.conf import settings

logger = logging.getLogger(__name__)

# Our processes, by what their command line holds: the web server, the workers, beat, PostgreSQL
# and Redis of the stack (embedded or not, when on this host).
PROCESS_MARKERS = ("manage.py", "celery", "granian", "gunicorn", "postgres", "redis-server", "pytest")


def disk_usage() -> dict:
    """The filesystem holding the data directory (uploads, models, embedded databases)."""
    path = str(settings.VAR_DIR)
    usage = psutil.disk_usage(path if os.path.exists(path) else "/")
    return {"path": path, "total_bytes": usage.total, "used_bytes": usage.used, "free_bytes": usage.free,
            "used_percent": round(usage.percent, 1)}  # fmt: skip


def memory_usage() -> dict:
    memory = psutil.virtual_memory()
    return {"total_bytes": memory.total, "available_bytes": memory.available, "used_percent": round(memory.percent, 1)}


def cpu_and_load() -> dict:
    load1, load5, load15 = os.getloadavg()
    return {
        "cores": psutil.cpu_count(logical=True),
        "percent": round(psutil.cpu_percent(interval=0.1), 1),
        "load": {"1m": round(load1, 2), "5m": round(load5, 2), "15m": round(load15, 2)},
    }


def processes(limit: int = 40) -> list[dict]:
    """Our processes on this host with their resident memory, largest first."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "memory_info", "create_time"]):
        try:
            command = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
            if not any(marker in command for marker in PROCESS_MARKERS) or process.info["memory_info"] is None:
                continue
            found.append({
                "pid": process.info["pid"],
                "name": process.info["name"],
                "command": command[:160],
                "rss_bytes": process.info["memory_info"].rss,
                "uptime_seconds": round(time.time() - process.info["create_time"]),
            })  # fmt: skip
        except (psutil.Error, TypeError):
            continue
    return sorted(found, key=lambda p: -p["rss_bytes"])[:limit]


def queue_names() -> list[str]:
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values() if "queue" in route}
    return sorted({settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_TRAINING_QUEUE, *routed})


def queue_depths() -> dict[str, int | None]:
    """Messages waiting per Celery queue (the broker's own count); None when the broker is down."""
    from chatbot_training.celery import app

    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
            channel = connection.default_channel
            size = getattr(channel, "_size", None)  # the Redis transport counts a list (and its priority lists)
            for name in queue_names():
                depths[name] = size(name) if size else channel.queue_declare(queue=name, passive=True).message_count
    except Exception:  # the broker is down: say so, do not fail
        logger.warning("queue depths unavailable", exc_info=True)
        for name in queue_names():
            depths.setdefault(name, None)
    return depths


def workers(timeout: float = 1.0) -> dict:
    """Live Celery workers, the queues they consume and the tasks they run now."""
    from chatbot_training.celery import app

    try:
        inspect = app.control.inspect(timeout=timeout)
        active = inspect.active() or {}
        queues = inspect.active_queues() or {}
    except Exception as exc:
        return {"error": f"Celery inspect failed: {exc.__class__.__name__}", "workers": []}
    listed = []
    for name in sorted(set(active) | set(queues)):
        listed.append({
            "name": name,
            "queues": sorted(q["name"] for q in queues.get(name, [])),
            "active": [{"task": t.get("name"), "id": t.get("id"), "kwargs": t.get("kwargs"),
                        "started": t.get("time_start")} for t in active.get(name, [])],  # fmt: skip
        })  # fmt: skip
    return {"workers": listed}


def system_figures() -> dict:
    """The whole host (staff only): what ``GET /api/metrics/system`` adds for staff."""
    return {
        "cpu": cpu_and_load(),
        "memory": memory_usage(),
        "disk": disk_usage(),
        "processes": processes(),
        "queues": queue_depths(),
        **workers(),
    }
