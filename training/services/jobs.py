"""Training jobs as state machines: ``queued → running → succeeded | failed | cancelled``.

Started by ``training_job_start`` (config validated field by field, one active job per chatbot,
enqueued on commit on the ``training`` queue), claimed by ``training_job_run`` with a conditional
update under a lease, heartbeat with every step, swept when its worker vanished (a job that lost
its worker is started again from the beginning: training is seeded, so the rerun gives the same
model), cancelled within one step.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from knowledge.services import Pulse
from search.services import serving_for
from tenants.errors import Conflict, DomainError, NotFound
from tenants.models import Chatbot, Tenant
from tenants.scoping import cross_tenant_context, tenant_context
from training.models import ContinuousLearning, TrainingJob, TrainingPair
from training.services import continuous, runs, trainer
from training.services.data import ensure_enough_pairs, training_pairs_collect
from training.services.versions import model_version_deploy, model_version_discard

logger = logging.getLogger(__name__)

Status = TrainingJob.Status
Stage = TrainingJob.Stage

# name: (type, low, high, default)
CONFIG = {
    "batch_size": (int, 2, 512, 16),
    "num_epochs": (float, 0.1, 50, 1),
    "learning_rate": (float, 1e-7, 1e-1, 2e-5),
    "warmup_ratio": (float, 0.0, 0.5, 0.1),
    "max_pairs": (int, 1, 1_000_000, 50_000),
    "hard_negatives": (bool, None, None, True),
    "auto_deploy": (bool, None, None, False),
    "seed": (int, 0, 2**31 - 1, 42),
    "adapter_rank": (int, 1, 256, 32),
}
# an adapter is a few thousand parameters over fixed vectors: larger steps, more passes, bigger batches
ADAPTER_DEFAULTS = {"batch_size": 64, "num_epochs": 10, "learning_rate": 1e-3}
# the query encoder contrasts each query with the whole corpus, at a larger step than a two-tower
# fine-tune. Measured on held-out queries (frozen base vectors): SciFact test 0.645 -> 0.678 (lr
# 2e-5, 1 epoch), 0.721 (1e-4, 1), 0.788 (2e-4, 2); BANKING77 0.794 -> 0.858 (1e-4, 1), 0.893
# (1e-4, 3), 0.901 (2e-4, 2) — a small FAQ needs the second pass
QUERY_ENCODER_DEFAULTS = {"batch_size": 32, "num_epochs": 2, "learning_rate": 2e-4}
TYPE_DEFAULTS = {TrainingJob.Type.ADAPTER: ADAPTER_DEFAULTS, TrainingJob.Type.QUERY_ENCODER: QUERY_ENCODER_DEFAULTS}
ADAPTER_ONLY = {"adapter_rank"}


def default_job_type(chatbot: Chatbot) -> str:
    """What ``POST /api/training/start`` without ``job_type`` runs: the fastest job that won on the
    held-out splits measured (bench/training.py) — the query encoder over the stored vectors for a
    local model, the query adapter for a hosted one (whose weights cannot be tuned)."""
    hosted = serving_for(chatbot).space.provider != "local"
    return TrainingJob.Type.ADAPTER if hosted else TrainingJob.Type.QUERY_ENCODER


def training_config_parse(config, *, job_type: str = TrainingJob.Type.INITIAL) -> dict:
    """Every config value checked for type and range; a 400 names the field. Defaults depend on
    the job type (``TYPE_DEFAULTS``)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise DomainError("config must be a JSON object.", field="config")
    unknown = sorted(set(config) - set(CONFIG) - {"sources"})
    if unknown:
        raise DomainError(f"config.{unknown[0]} is not a setting; use {', '.join([*CONFIG, 'sources'])}.",
                          field=f"config.{unknown[0]}")  # fmt: skip
    adapter = job_type == TrainingJob.Type.ADAPTER
    misplaced = sorted(set(config) & ADAPTER_ONLY) if not adapter else []
    if misplaced:
        raise DomainError(f"config.{misplaced[0]} applies to adapter jobs only.", field=f"config.{misplaced[0]}")
    out = {}
    for name, (kind, low, high, default) in CONFIG.items():
        default = TYPE_DEFAULTS.get(job_type, {}).get(name, default)
        if not adapter and name in ADAPTER_ONLY:
            continue
        value = config.get(name, default)
        field = f"config.{name}"
        if kind is bool:
            if not isinstance(value, bool):
                raise DomainError(f"{field} must be true or false.", field=field)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise DomainError(f"{field} must be a number.", field=field)
            if kind is int and not float(value).is_integer():
                raise DomainError(f"{field} must be a whole number.", field=field)
            if not low <= value <= high:
                raise DomainError(f"{field} must be from {low:g} to {high:g}.", field=field)
            value = kind(value)
        out[name] = value
    sources = config.get("sources")
    if sources is not None:
        if not isinstance(sources, list) or not sources or not all(s in TrainingPair.Source.values for s in sources):
            raise DomainError(
                f"config.sources must be a list of {', '.join(TrainingPair.Source.values)}.", field="config.sources"
            )
        out["sources"] = sorted(set(sources))
    return out


def training_job_start(
    *, tenant: Tenant, chatbot: Chatbot, job_type: str | None, config, requested_by: str = ""
) -> TrainingJob:
    """Queue a job; ``job_type`` None is the chatbot's default (``default_job_type``)."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    if job_type is None or job_type == "":
        job_type = default_job_type(chatbot)
    if job_type not in TrainingJob.Type.values:
        raise DomainError(f"job_type must be one of {', '.join(TrainingJob.Type.values)}.", field="job_type")
    config = training_config_parse(config, job_type=job_type)
    serving = serving_for(chatbot)
    if serving.space.provider != "local" and job_type != TrainingJob.Type.ADAPTER:
        raise DomainError(
            f"{serving.space.key} is a hosted model and cannot be fine-tuned; start an adapter job, "
            "which tunes its queries over the stored vectors.",
            field="job_type",
        )
    training_pairs_collect(chatbot=chatbot)
    summary = ensure_enough_pairs(chatbot=chatbot, sources=config.get("sources"))
    try:
        with transaction.atomic():
            job = TrainingJob.objects.create(
                tenant=tenant,
                chatbot=chatbot,
                job_type=job_type,
                config=config,
                data_summary=summary,
                requested_by=requested_by[:200],
            )
    except IntegrityError:
        raise Conflict("This chatbot already has a training job queued or running; wait for it or cancel it.") from None
    transaction.on_commit(lambda: training_job_enqueue(job.pk, tenant.pk))
    return job


def training_job_enqueue(job_id: int, tenant_id: int) -> None:
    from training.tasks import training_job_run_task

    try:
        training_job_run_task.delay(job_id=job_id, tenant_id=tenant_id)  # the training queue (CELERY_TASK_ROUTES)
    except Exception:  # the broker is down: the sweeper sends it again
        logger.warning("training job %s not sent to the broker; the sweeper will", job_id, exc_info=True)


def training_job_cancel(*, tenant: Tenant, job: TrainingJob) -> TrainingJob:
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().get(pk=job.pk, tenant=tenant)
        if job.status not in TrainingJob.ACTIVE:
            raise Conflict(f"This job is {job.status}; only a queued or running job can be cancelled.")
        if job.status == Status.QUEUED:
            job.status, job.finished_at, job.error = Status.CANCELLED, timezone.now(), "Cancelled before it started."
            job.save(update_fields=["status", "finished_at", "error"])
        else:
            job.cancel_requested = True
            job.save(update_fields=["cancel_requested"])
    return job


def _claim(job_id: int, lease_token: str) -> TrainingJob | None:
    stale = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    from django.db.models import Q

    claimed = (
        TrainingJob.objects.filter(pk=job_id)
        # queued; or running under this very lease (its message redelivered after the worker died:
        # the rerun starts from the beginning, and training is seeded); or silent for too long
        .filter(
            Q(status=Status.QUEUED)
            | Q(status=Status.RUNNING, lease_token=lease_token)
            | Q(status=Status.RUNNING, heartbeat_at__lt=stale)
        )
        .update(
            status=Status.RUNNING,
            lease_token=lease_token,
            heartbeat_at=timezone.now(),
            started_at=timezone.now(),
            stage=Stage.COLLECTING,
            progress=1,
            step=0,
            loss=[],
            stage_seconds={},
        )
    )
    if not claimed:
        return None
    job = TrainingJob.objects.get(pk=job_id)
    job._stage_began = time.monotonic()
    TrainingJob.objects.filter(pk=job_id).update(attempts=job.attempts + 1)
    return job


class LeaseLost(Exception):
    pass


STAGE_NAMES = {
    Stage.COLLECTING: "collect",
    Stage.MINING: "mine",
    Stage.TRAINING: "train",
    Stage.EVALUATING: "evaluate",
    Stage.SAVING: "save",
}  # and "deploy", written by the deploy when the version first serves (versions.model_version_deploy_run)
STAGE_ORDER = [*STAGE_NAMES.values(), "deploy"]


def _timed(job: TrainingJob, fields: dict) -> None:
    """A stage change adds the stage that ended to ``stage_seconds`` (written with the change)."""
    new = fields.get("stage")
    if new is None or new == job.stage:
        return
    now = time.monotonic()
    began = getattr(job, "_stage_began", None)
    if began is not None and job.stage in STAGE_NAMES:
        name = STAGE_NAMES[job.stage]
        fields["stage_seconds"] = {**job.stage_seconds, name: round(job.stage_seconds.get(name, 0) + now - began, 2)}
    job._stage_began = now


def _beat(job: TrainingJob, **fields) -> None:
    """Write progress under the lease; raise LeaseLost if another worker owns the job now."""
    _timed(job, fields)
    fields["heartbeat_at"] = timezone.now()
    updated = TrainingJob.objects.filter(pk=job.pk, lease_token=job.lease_token, status=Status.RUNNING).update(**fields)
    if not updated:
        raise LeaseLost()
    for name, value in fields.items():
        setattr(job, name, value)


def _finish(job: TrainingJob, status: str, **fields) -> None:
    timing = {"stage": Stage.DONE}
    _timed(job, timing)  # the stage that ended with the job
    if "stage_seconds" in timing:
        fields["stage_seconds"] = timing["stage_seconds"]
    TrainingJob.objects.filter(pk=job.pk, lease_token=job.lease_token).update(
        status=status, finished_at=timezone.now(), heartbeat_at=timezone.now(), lease_token="", **fields
    )


def training_job_run(*, job_id: int, lease_token: str | None = None) -> str:
    """Run a claimed job to its end; returns the final status (or ``skipped``)."""
    job = _claim(job_id, lease_token or uuid.uuid4().hex)
    if job is None:
        return "skipped"
    try:
        with Pulse(job, running=Status.RUNNING, every=settings.TRAINING_HEARTBEAT_SECONDS):
            return _run(job)
    except LeaseLost:
        return "skipped"
    except trainer.Cancelled:
        stage = TrainingJob.Stage(job.stage).label.lower() if job.stage != Stage.WAITING else "starting"
        _finish(job, Status.CANCELLED, error=f"Cancelled while {stage}; no version was made.", stage=Stage.DONE)
        return Status.CANCELLED
    except DomainError as exc:
        _finish(job, Status.FAILED, error=exc.message)
        return Status.FAILED
    except OSError as exc:  # disk full while saving, a missing file
        _finish(job, Status.FAILED, error=f"Could not write the model: {exc.strerror or exc}.")
        return Status.FAILED
    except Exception as exc:
        logger.exception("training job %s failed", job_id)
        _finish(job, Status.FAILED, error=f"Training failed: {type(exc).__name__}: {exc}"[:2000])
        return Status.FAILED


def _cancelled(job: TrainingJob) -> bool:
    return TrainingJob.objects.filter(pk=job.pk, cancel_requested=True).exists()


def _run(job: TrainingJob) -> str:
    chatbot = job.chatbot
    config = training_config_parse(job.config, job_type=job.job_type)
    if _cancelled(job):
        raise trainer.Cancelled()
    training_pairs_collect(chatbot=chatbot)  # what arrived since the job was queued
    summary = ensure_enough_pairs(chatbot=chatbot, sources=config.get("sources"))
    _beat(job, data_summary=summary)
    control = runs.Control(beat=lambda **fields: _beat(job, **fields), cancelled=lambda: _cancelled(job))
    outcome = runs.RUNS[job.job_type](job, config, control)
    if _cancelled(job):  # the cancel arrived while the version was saved: it goes again
        model_version_discard(outcome.version)
        raise trainer.Cancelled()
    _finish(job, Status.SUCCEEDED, stage=Stage.DONE, progress=100, metrics=outcome.metrics, loss=outcome.losses,
            eta_seconds=0)  # fmt: skip
    if job.requested_by == continuous.REQUESTER:
        try:
            continuous.continuous_learning_after(job, outcome.version)
        except DomainError as exc:  # e.g. someone started a test meanwhile: the version waits as a candidate
            ContinuousLearning.objects.filter(chatbot=chatbot).update(
                last_outcome=f"Version {outcome.version.number} is a candidate: {exc.message}"
            )
    elif config["auto_deploy"] and outcome.version.gate.get("passed"):
        model_version_deploy(tenant=chatbot.tenant, version=outcome.version)
    return Status.SUCCEEDED


def training_jobs_sweep() -> dict:
    """Jobs whose worker vanished (no heartbeat for TRAINING_STALE_AFTER_SECONDS) are sent again
    (their rerun starts from the beginning), and queued jobs never picked up are re-sent."""
    stale = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    resent = failed = 0
    with cross_tenant_context("training-job-sweep"):
        rows = list(
            TrainingJob.objects.filter(status__in=TrainingJob.ACTIVE)
            .filter(heartbeat_at__lt=stale)
            .values_list("pk", "tenant_id", "attempts")
            .union(
                TrainingJob.objects.filter(
                    status=Status.QUEUED, heartbeat_at__isnull=True, created_at__lt=stale
                ).values_list("pk", "tenant_id", "attempts")
            )
        )
    for job_id, tenant_id, attempts in rows:
        with tenant_context(tenant_id):
            if attempts >= settings.TRAINING_MAX_ATTEMPTS:
                TrainingJob.objects.filter(pk=job_id, status__in=TrainingJob.ACTIVE).update(
                    status=Status.FAILED,
                    finished_at=timezone.now(),
                    lease_token="",
                    error=f"The worker stopped {attempts} times while running this job; it was given up.",
                )
                failed += 1
                continue
        training_job_enqueue(job_id, tenant_id)
        resent += 1
    return {"resent": resent, "failed": failed}


def training_job_tenant_id(*, job_id: int) -> int | None:
    with cross_tenant_context("training-job-lookup"):
        return TrainingJob.objects.filter(pk=job_id).values_list("tenant_id", flat=True).first()
