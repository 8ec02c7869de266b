"""Celery entry points of search."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="search.logs_flush", expires=30)
def search_logs_flush_task() -> int:
    """Safety net for the web processes' own flushers: queued search logs reach the database."""
    from search.logbuffer import search_logs_flush

    return search_logs_flush()
