"""Continuous learning: the loop closes by itself, per chatbot that opted in.

``continuous_learning_run`` (beat) looks at every enabled chatbot: when no job, deploy or A/B
test of it is under way, ``min_days_between`` have passed since its last run and at least
``min_new_pairs`` training pairs arrived since its last version (feedback, new FAQ rows and chat
logs, uploaded pairs, pairs made from new chunks), it starts a job: ``incremental`` from the
weights serving now, or an ``adapter`` (as set; always for a hosted model). When the job ends,
``continuous_learning_after`` acts on the gate: a version that passed is A/B-tested at
``auto_ab_percent`` (when set) or deployed (``auto_deploy``); one that failed stays a candidate
with its numbers and nothing changes. Every step is written to ``last_outcome``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from search.services import serving_for
from tenants.audit import audit_record
from tenants.errors import DomainError, NotFound
from tenants.models import Chatbot, Tenant
from training.models import ABTest, ContinuousLearning, ModelVersion, TrainingJob, TrainingPair
from training.services.data import training_pairs_collect

logger = logging.getLogger(__name__)

REQUESTER = "continuous-learning"
FIELDS = {  # name: (type, low, high)
    "enabled": (bool, None, None),
    "job_type": (str, None, None),
    "min_new_pairs": (int, 1, 1_000_000),
    "min_days_between": (float, 0, 365),
    "auto_deploy": (bool, None, None),
    "auto_ab_percent": (int, 0, 50),
}


def continuous_learning_get(*, chatbot: Chatbot) -> ContinuousLearning:
    found = ContinuousLearning.objects.filter(chatbot=chatbot).select_related("last_job").first()
    return found or ContinuousLearning(tenant_id=chatbot.tenant_id, chatbot=chatbot)


def continuous_learning_update(*, tenant: Tenant, chatbot: Chatbot, changes, user=None) -> ContinuousLearning:
    """Set some of FIELDS (the others keep their values); refuses unknown fields and bad values."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    if not isinstance(changes, dict):
        raise DomainError("The request body must be a JSON object.")
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise DomainError(f"{unknown[0]}: unknown field; the settings are {', '.join(FIELDS)}.", field=unknown[0])
    with transaction.atomic():
        settings, _ = ContinuousLearning.objects.select_for_update().get_or_create(
            chatbot=chatbot, defaults={"tenant_id": tenant.pk}
        )
        for name, value in changes.items():
            kind, low, high = FIELDS[name]
            if kind is str:
                allowed = (TrainingJob.Type.QUERY_ENCODER, TrainingJob.Type.INCREMENTAL, TrainingJob.Type.ADAPTER)
                if value not in allowed:
                    raise DomainError(f"{name} must be query_encoder, incremental or adapter.", field=name)
            elif kind is bool:
                if not isinstance(value, bool):
                    raise DomainError(f"{name} must be true or false.", field=name)
            else:
                if isinstance(value, float) and value.is_integer() and kind is int:
                    value = int(value)
                wanted = int if kind is int else int | float
                if isinstance(value, bool) or not isinstance(value, wanted):
                    raise DomainError(f"{name} must be a {'whole ' if kind is int else ''}number.", field=name)
                if not low <= value <= high:
                    raise DomainError(f"{name} must be from {low} to {high}.", field=name)
            setattr(settings, name, value)
        settings.save()
        audit_record(action="continuous_learning.update", tenant_id=tenant.pk, target=f"chatbot:{chatbot.pk}",
                     **{k: changes[k] for k in changes})  # fmt: skip
    return settings


def new_pairs_since_last_version(chatbot: Chatbot) -> int:
    last = ModelVersion.objects.filter(chatbot=chatbot).order_by("-created_at").first()
    pairs = TrainingPair.objects.filter(chatbot=chatbot)
    return (pairs.filter(created_at__gt=last.created_at) if last else pairs).count()


def _busy(chatbot: Chatbot) -> str:
    if TrainingJob.objects.filter(chatbot=chatbot, status__in=TrainingJob.ACTIVE).exists():
        return "a training job is under way"
    if ModelVersion.objects.filter(chatbot=chatbot, status=ModelVersion.Status.DEPLOYING).exists():
        return "a version is being deployed"
    if ABTest.objects.filter(chatbot=chatbot, status__in=ABTest.LIVE).exists():
        return "an A/B test is running"
    return ""


def continuous_learning_check(settings: ContinuousLearning) -> str:
    """One chatbot's turn: starts a job or says why not (also kept as ``last_outcome``)."""
    from training.services.jobs import training_job_start

    chatbot = settings.chatbot
    now = timezone.now()
    settings.last_checked_at = now
    outcome = ""
    busy = _busy(chatbot)
    if busy:
        outcome = f"Waiting: {busy}."
    elif settings.last_run_at and now < settings.last_run_at + timedelta(days=settings.min_days_between):
        outcome = f"Waiting: the last run was {settings.last_run_at:%Y-%m-%d %H:%M}, at most every " \
                  f"{settings.min_days_between:g} days."  # fmt: skip
    else:
        training_pairs_collect(chatbot=chatbot, llm=False)
        new = new_pairs_since_last_version(chatbot)
        if new < settings.min_new_pairs:
            outcome = f"Waiting: {new} new training pairs since the last version; {settings.min_new_pairs} start a run."
        else:
            hosted = serving_for(chatbot).space.provider != "local"
            job_type = TrainingJob.Type.ADAPTER if hosted else settings.job_type
            try:
                with transaction.atomic():  # saved before the job is sent: its outcome is written after this
                    job = training_job_start(tenant=chatbot.tenant, chatbot=chatbot, job_type=job_type,
                                             config={"auto_deploy": False}, requested_by=REQUESTER)  # fmt: skip
                    settings.last_run_at, settings.last_job = now, job
                    outcome = f"Started {job_type} job {job.pk} on {new} new training pairs."
                    _save(settings, outcome)
                return outcome
            except DomainError as exc:
                outcome = f"Not started: {exc.message}"
    _save(settings, outcome)
    return outcome


def _save(settings: ContinuousLearning, outcome: str) -> None:
    if outcome != settings.last_outcome:
        logger.info("continuous learning, chatbot %s: %s", settings.chatbot_id, outcome)
    settings.last_outcome = outcome
    settings.save(update_fields=["last_checked_at", "last_run_at", "last_job", "last_outcome", "updated_at"])


def continuous_learning_run() -> dict:
    """Scheduled: every enabled chatbot gets its turn (``continuous_learning_check``)."""
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("continuous-learning"):
        rows = list(ContinuousLearning.objects.filter(enabled=True).values_list("pk", "tenant_id"))
    started = 0
    for settings_id, tenant_id in rows:
        with tenant_context(tenant_id):
            settings = ContinuousLearning.objects.select_related("chatbot__tenant").get(pk=settings_id)
            try:
                started += continuous_learning_check(settings).startswith("Started")
            except Exception:  # one chatbot's trouble never stops the others' turn
                logger.exception("continuous learning of chatbot %s failed", settings.chatbot_id)
    return {"chatbots": len(rows), "started": started}


def continuous_learning_after(job: TrainingJob, version: ModelVersion) -> str:
    """A continuous-learning job ended with ``version``: act on the gate as the settings say."""
    from training.services.abtests import ab_test_start
    from training.services.versions import model_version_deploy

    settings = continuous_learning_get(chatbot=job.chatbot)
    gate = version.gate
    if not gate.get("passed"):
        outcome = f"Version {version.number} refused by the gate ({gate.get('reason', '')}); nothing changed."
    elif settings.auto_ab_percent:
        ab_test_start(tenant=job.chatbot.tenant, chatbot=job.chatbot, variant_version_id=version.pk,
                      traffic_percent=settings.auto_ab_percent, requested_by=REQUESTER)  # fmt: skip
        outcome = f"Version {version.number} passed the gate ({gate['reason']}); A/B test at " \
                  f"{settings.auto_ab_percent}% started."  # fmt: skip
    elif settings.auto_deploy:
        model_version_deploy(tenant=job.chatbot.tenant, version=version)
        outcome = f"Version {version.number} passed the gate ({gate['reason']}); deploying it."
    else:
        outcome = f"Version {version.number} passed the gate ({gate['reason']}); waiting for a deploy by hand."
    if settings.pk:
        ContinuousLearning.objects.filter(pk=settings.pk).update(last_outcome=outcome)
    audit_record(action="continuous_learning.outcome", tenant_id=job.tenant_id, target=f"chatbot:{job.chatbot_id}",
                 version=version.number, outcome=outcome)  # fmt: skip
    return outcome
