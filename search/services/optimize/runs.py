"""Optimization runs as a job: start (validated, one live run per chatbot, enqueued on commit),
claim with a conditional UPDATE, the actions in order with progress, a readable failure, the
nightly start for every chatbot with vectors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from knowledge import vectors
from search.models import OptimizationRun
from search.services.optimize import tune as tuning
from search.services.optimize import upkeep
from tenants.errors import Conflict, DomainError, NotFound
from tenants.models import Chatbot, Tenant

logger = logging.getLogger(__name__)

ACTIONS = ("tune", "reindex", "vacuum", "analyze")
Status = OptimizationRun.Status


def optimization_start(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    actions: list[str] | None = None,
    recall_target: float = 0.98,
    requested_by: str = "",
) -> OptimizationRun:
    """Queue an optimisation run of ``actions`` (all, in their order, by default)."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    actions = optimization_actions_parse(actions)
    optimization_runs_expire(chatbot=chatbot)
    if isinstance(recall_target, bool) or not isinstance(recall_target, int | float):
        raise DomainError("recall_target must be a number above 0.5 and at most 1.0.", field="recall_target")
    if not 0.5 < float(recall_target) <= 1.0:
        raise DomainError(
            f"recall_target must be above 0.5 and at most 1.0 (got {recall_target}); 0.98 is a good start.",
            field="recall_target",
        )
    try:
        with transaction.atomic():
            run = OptimizationRun.objects.create(
                tenant=tenant,
                chatbot=chatbot,
                actions=actions,
                recall_target=float(recall_target),
                requested_by=requested_by[:200],
                stage="Waiting for a worker",
            )
    except IntegrityError:
        raise Conflict("This chatbot already has an optimization run queued or running; wait for it to end.") from None
    transaction.on_commit(lambda: optimization_enqueue(run.pk, tenant.pk))
    return run


def optimization_actions_parse(actions) -> list[str]:
    if actions is None:
        return list(ACTIONS)
    if not isinstance(actions, list | tuple) or not actions or not all(isinstance(a, str) for a in actions):
        raise DomainError(f"actions must be a non-empty list of {', '.join(ACTIONS)}.", field="actions")
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise DomainError(
            f"Unknown action {unknown[0]!r}: actions are {', '.join(ACTIONS)}.", field="actions", code="invalid"
        )
    return [a for a in ACTIONS if a in actions]  # each once, in the order they make sense


def optimization_runs_expire(*, chatbot: Chatbot) -> int:
    """Fail the chatbot's runs whose worker went silent (no progress for
    ``OPTIMIZE_STALE_AFTER_SECONDS``; a queued run never picked up for as long), so they stop
    holding the chatbot's one live run. Called before each start (API, dashboard, nightly)."""
    stale = timezone.now() - timedelta(seconds=settings.OPTIMIZE_STALE_AFTER_SECONDS)
    live = OptimizationRun.objects.filter(chatbot_id=chatbot.pk, status__in=OptimizationRun.ACTIVE)
    silent = live.filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, created_at__lt=stale))
    return silent.update(
        status=Status.FAILED,
        finished_at=timezone.now(),
        error="The worker stopped answering while this run was queued or running; start a new run.",
    )


def optimization_enqueue(run_id: int, tenant_id: int) -> None:
    from search.tasks import optimization_run_task

    try:
        optimization_run_task.delay(run_id=run_id, tenant_id=tenant_id)  # the default (maintenance) queue
    except Exception:  # the broker is down: the nightly run finds the chatbot again
        logger.warning("optimization run %s not sent to the broker", run_id, exc_info=True)


def _claim(run_id: int) -> OptimizationRun | None:
    claimed = OptimizationRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=timezone.now(),
        percent=1,
        stage="Starting",
        heartbeat_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    return OptimizationRun.objects.select_related("chatbot").get(pk=run_id) if claimed else None


def _save(run: OptimizationRun, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    OptimizationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(**fields)
    for name, value in fields.items():
        setattr(run, name, value)


def optimization_run(*, run_id: int) -> str:
    """Run a queued run to its end (in the run's tenant scope); returns its final status, or
    ``skipped`` when it is not queued (already taken, or done)."""
    run = _claim(run_id)
    if run is None:
        return "skipped"
    results: dict = {}
    action = ""
    try:
        for number, action in enumerate(run.actions):
            low, high = 1 + 98 * number // len(run.actions), 1 + 98 * (number + 1) // len(run.actions)

            def progress(fraction: float, stage: str, *, action=action, low=low, high=high) -> None:
                percent = low + int((high - low) * min(max(fraction, 0.0), 1.0))
                _save(run, percent=percent, stage=f"{action}: {stage}"[:200])

            progress(0.0, "starting")
            results[action] = ACTION_RUNNERS[action](run, results, progress)
            _save(run, results=results, percent=high)
    except DomainError as exc:
        _finish(run, Status.FAILED, results, error=exc.message)
        return Status.FAILED
    except Exception as exc:
        logger.exception("optimization run %s failed", run_id)
        _finish(run, Status.FAILED, results, error=f"{action} failed: {type(exc).__name__}: {exc}"[:2000])
        return Status.FAILED
    _finish(run, Status.SUCCEEDED, results, percent=100, stage="Done")
    return Status.SUCCEEDED


def _finish(run: OptimizationRun, status: str, results: dict, **fields) -> None:
    OptimizationRun.objects.filter(pk=run.pk).update(
        status=status, results=results, finished_at=timezone.now(), **fields
    )


ACTION_RUNNERS: dict[str, Callable[[OptimizationRun, dict, Callable], dict]] = {
    "tune": tuning.tune,
    "reindex": upkeep.reindex,
    "vacuum": upkeep.vacuum,
    "analyze": upkeep.analyze,
}


# --- nightly -------------------------------------------------------------------------------------


def optimization_nightly() -> dict:
    """Start a run with the default actions for every chatbot with vectors (beat, once a day);
    chatbots with a live run are skipped."""
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("search-optimize-nightly"):
        bots = sorted({bot for _, bot in vectors.vector_counts()})
        tenants = dict(Chatbot.objects.filter(pk__in=bots).values_list("pk", "tenant_id"))
        live = set(
            OptimizationRun.objects.filter(status__in=OptimizationRun.ACTIVE).values_list("chatbot_id", flat=True)
        )
    started, skipped = [], []
    for bot_id in bots:
        if bot_id in live or bot_id not in tenants:
            skipped.append(bot_id)
            continue
        with tenant_context(tenants[bot_id]):
            chatbot = Chatbot.objects.select_related("tenant").get(pk=bot_id)
            try:
                optimization_start(tenant=chatbot.tenant, chatbot=chatbot, requested_by="nightly")
                started.append(bot_id)
            except Conflict:
                skipped.append(bot_id)
    return {"started": started, "skipped": skipped}


def optimization_run_tenant_id(*, run_id: int) -> int | None:
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("search-optimization-lookup"):
        return OptimizationRun.objects.filter(pk=run_id).values_list("tenant_id", flat=True).first()
