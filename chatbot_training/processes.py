"""Command lines of the project's long-running processes, shared by `make run`, tests and benchmarks."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def web_workers() -> int:
    """One web worker process per core (``WEB_WORKERS`` overrides)."""
    return int(os.environ.get("WEB_WORKERS") or os.cpu_count() or 1)


def web_command(
    *, host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, threads: int = 4, static_root=None
) -> list[str]:
    """The production web server: granian (WSGI) running ``chatbot_training.wsgi`` (the search
    fast path in front of Django), ``workers`` processes of ``threads`` request threads each,
    respawned if one dies; ``static_root`` (collected static files) served by granian itself."""
    command = [
        str(Path(sys.executable).with_name("granian")), "--interface", "wsgi", "--host", host, "--port", str(port),
        "--workers", str(workers or web_workers()), "--blocking-threads", str(threads), "--respawn-failed-workers",
        "--log-level", "warning",
    ]  # fmt: skip
    if static_root is not None:
        command += ["--static-path-route", "/static", "--static-path-mount", str(static_root)]
    return [*command, "chatbot_training.wsgi:application"]


def web_env(env: dict) -> dict:
    """The web processes' environment: short statement timeout, one embedding thread per worker
    (the cores are shared by the workers), persistent database connections."""
    return {**env, "CHATBOT_PROCESS": "web", "EMBEDDING_TORCH_THREADS": env.get("EMBEDDING_TORCH_THREADS", "1")}


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "chatbot_training", *args]


def worker_command(
    *, concurrency: int = 1, loglevel: str = "INFO", queue: str | None = None, name: str | None = None
) -> list[str]:
    """One prefork worker; with ``queue`` it consumes only that queue and skips cluster chatter."""
    command = celery_command("worker", "-l", loglevel, "-c", str(concurrency), "-P", "prefork")
    if name:
        command += ["-n", name]
    if queue:
        command += ["-Q", queue, "--without-mingle", "--without-gossip"]
    return command
