"""Command lines of the project's long-running processes, shared by `make run`, tests and benchmarks."""

from __future__ import annotations

import sys


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
