"""Celery entry points of search."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="search.logs_flush", expires=30)
def search_logs_flush_task() -> int:
    """Safety net for the web processes' own flushers: queued search logs reach the database."""
    from search.logbuffer import search_logs_flush

    return search_logs_flush()


@shared_task(name="search.optimization_run", acks_late=True, reject_on_worker_lost=True, time_limit=6 * 3600)
def optimization_run_task(*, run_id: int, tenant_id: int | None = None) -> str:
    """One optimisation run (search/services/optimize/), on the default queue with ingestion
    and index upkeep."""
    from search.services.optimize import optimization_run, optimization_run_tenant_id
    from tenants.scoping import tenant_context

    tenant_id = tenant_id or optimization_run_tenant_id(run_id=run_id)
    if tenant_id is None:
        return "skipped"
    with tenant_context(tenant_id):
        return optimization_run(run_id=run_id)


@shared_task(name="search.optimize_nightly", expires=3600)
def optimize_nightly_task() -> dict:
    from search.services.optimize import optimization_nightly

    return optimization_nightly()
