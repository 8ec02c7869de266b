"""Model versions: made from a training job, judged by the gate, deployed without downtime,
rolled back at once, retired past the last two.

- ``model_version_create``: the fine-tuned weights saved under the artifacts directory (written
  to a temporary folder and renamed, so a half-written artifact is never served), a tenant-owned
  ``EmbeddingSpace`` for them, and the evaluation gate's verdict.
- ``model_version_deploy``: the chatbot holds the new space as ``building`` (documents uploaded
  meanwhile are embedded into both spaces), a job on the ``training`` queue re-embeds every ready
  chunk into it with progress, then ``chatbot_space_activate`` switches in one transaction:
  searches never see a half-built space. The old active version becomes ``previous``.
- ``model_rollback``: ``previous`` (or the base model) active again at once: its vectors were kept.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.db.models.expressions import RawSQL
from django.utils import timezone

from knowledge.artifacts import artifact_delete, artifact_publish
from knowledge.embeddings import provider_evict, provider_for_space
from knowledge.models import ChatbotSpace, ChunkEmbedding, EmbeddingSpace
from knowledge.services import (
    chatbot_space_activate,
    chatbot_space_add,
    chunk_embeddings_backfill,
    embedding_space_create_version,
)
from tenants.audit import audit_record
from tenants.errors import Conflict, DomainError, NotFound
from tenants.models import Chatbot, Tenant
from training.models import ABTest, ModelVersion, TrainingJob

logger = logging.getLogger(__name__)

VStatus = ModelVersion.Status


def gate_verdict(metrics: dict) -> dict:
    """Deployable only if nDCG@10 gains at least TRAINING_MIN_GAIN over the active version, the
    paired-bootstrap 95% interval of the gain is above zero, and no source loses more than
    TRAINING_MAX_SOURCE_LOSS."""
    gain = metrics["bootstrap"]["gain"]
    low = metrics["bootstrap"]["low"]
    worse = {
        source: round(v["candidate"]["ndcg_10"] - v["active"]["ndcg_10"], 4)
        for source, v in metrics["per_source"].items()
        if v["candidate"].get("queries", 0) >= 5
        and v["candidate"]["ndcg_10"] - v["active"]["ndcg_10"] < -settings.TRAINING_MAX_SOURCE_LOSS
    }
    if gain < settings.TRAINING_MIN_GAIN:
        reason = f"nDCG@10 gain {gain:+.4f} is below the required {settings.TRAINING_MIN_GAIN:+.4f}."
    elif low <= 0:
        reason = f"The gain {gain:+.4f} is not certain: its 95% interval starts at {low:+.4f}."
    elif worse:
        reason = "Worse on " + ", ".join(f"{k} ({v:+.4f})" for k, v in worse.items()) + "."
    else:
        reason = f"nDCG@10 {gain:+.4f} (95% interval {low:+.4f} to {metrics['bootstrap']['high']:+.4f})."
        return {"passed": True, "reason": reason, "gain": gain, "low": low}
    return {"passed": False, "reason": reason, "gain": gain, "low": low, "worse_sources": worse}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def model_version_create(
    *, job: TrainingJob, metrics: dict, save, workdir: Path, vectors_from: EmbeddingSpace | None = None
) -> ModelVersion:
    """``save(folder)`` writes the artifact (fine-tuned weights, or a query adapter over the
    vectors of ``vectors_from``)."""
    chatbot = job.chatbot
    number = (ModelVersion.objects.filter(chatbot=chatbot).aggregate(n=Max("number"))["n"] or 0) + 1
    relative = f"tenant-{chatbot.tenant_id}/chatbot-{chatbot.pk}/v{number}-job{job.pk}"
    staging = workdir / "model"
    save(staging)
    size = _dir_size(staging)
    artifact_publish(relative, staging)  # to the shared artifact store, before the row names it
    gate = gate_verdict(metrics)
    with transaction.atomic():
        space = embedding_space_create_version(
            tenant=chatbot.tenant,
            model_key=(vectors_from.model_key if vectors_from is not None else f"local:{model_base_name(chatbot)}"),
            version=f"c{chatbot.pk}.v{number}",
            artifact=relative,
            vectors_from=vectors_from,
        )
        return ModelVersion.objects.create(
            tenant_id=chatbot.tenant_id,
            chatbot=chatbot,
            number=number,
            space=space,
            job=job,
            status=VStatus.CANDIDATE,
            metrics=metrics,
            gate=gate,
            data_summary=job.data_summary,
            size_bytes=size,
        )


def model_version_discard(version: ModelVersion) -> None:
    """Undo ``model_version_create`` (the job was cancelled while it saved): no version is left,
    nor its space or files."""
    with transaction.atomic():
        space = version.space
        version.delete()
        provider_evict(space)
        artifact = space.artifact
        space.delete()
        if artifact:
            transaction.on_commit(lambda: artifact_delete(artifact))


def model_base_name(chatbot: Chatbot) -> str:
    from search.services import serving_for

    return serving_for(chatbot).space.model_name


def model_version_deploy(*, tenant: Tenant, version: ModelVersion, force: bool = False, user=None) -> ModelVersion:
    if version.tenant_id != tenant.pk:
        raise NotFound("Model version not found.", field="version_id")
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status in (VStatus.FAILED, VStatus.RETIRED):
            raise Conflict(f"Version {version.number} is {version.status} and cannot be deployed.")
        if version.status in (VStatus.ACTIVE, VStatus.DEPLOYING, VStatus.TESTING):
            raise Conflict(f"Version {version.number} is already {version.status}.")
        if not version.gate.get("passed") and not force:
            raise Conflict(
                f"Version {version.number} did not pass the evaluation gate ({version.gate.get('reason', '')}); "
                "deploy it anyway with force: true."
            )
        if ModelVersion.objects.filter(chatbot_id=version.chatbot_id, status=VStatus.DEPLOYING).exists():
            raise Conflict("Another version of this chatbot is being deployed; wait for it to finish.")
        if ABTest.objects.filter(chatbot_id=version.chatbot_id, status__in=ABTest.LIVE).exists():
            raise Conflict("An A/B test is running for this chatbot; promote or stop it before deploying.")
        model_version_hold(version.chatbot, version)
        version.status, version.deploy_progress, version.error = VStatus.DEPLOYING, 0, ""
        version.save(update_fields=["status", "deploy_progress", "error"])
        if force and not version.gate.get("passed"):
            audit_record(
                action="model.deploy_forced",
                tenant_id=tenant.pk,
                target=f"model_version:{version.pk}",
                reason=version.gate.get("reason", ""),
            )
        transaction.on_commit(lambda: _deploy_enqueue(version.pk, tenant.pk))
    return version


def _deploy_enqueue(version_id: int, tenant_id: int) -> None:
    from training.tasks import model_version_deploy_task

    try:
        model_version_deploy_task.delay(version_id=version_id, tenant_id=tenant_id)  # the training queue
        logger.info("deploy of model version %s queued", version_id)
    except Exception:
        logger.warning("deploy of version %s not sent to the broker", version_id, exc_info=True)


def model_version_deploy_run(*, version_id: int) -> str:
    """Re-embed every ready chunk into the version's space (with progress), then switch."""
    version = (
        ModelVersion.objects.filter(pk=version_id, status=VStatus.DEPLOYING).select_related("space", "chatbot").first()
    )
    if version is None:
        return "skipped"

    def progress(percent: int) -> None:
        ModelVersion.objects.filter(pk=version.pk).update(deploy_progress=percent)

    began = time.monotonic()
    failed = model_version_embed(version, progress=progress, then=lambda: _switch(version.chatbot, version))
    if not failed and version.job_id:  # the job's stage timings end with its version's first serving
        TrainingJob.objects.filter(pk=version.job_id).exclude(stage_seconds__has_key="deploy").update(
            stage_seconds=RawSQL(
                "stage_seconds || jsonb_build_object('deploy', %s::float)", [round(time.monotonic() - began, 2)]
            )  # fmt: skip
        )
    return "failed" if failed else "active"


def model_version_embed(version: ModelVersion, *, progress, then) -> str | None:
    """Give the version's space a vector for every ready chunk (``progress(percent)`` as it goes;
    nothing to do for an adapter over vectors that exist), then, in one transaction with what
    arrived meanwhile, ``then()`` (switch, or begin an A/B test). None when done, else why it
    failed: a refusal (``DomainError``) leaves the version a candidate; anything else (a corrupt
    artifact) fails it, and the active version keeps serving either way."""
    chatbot = version.chatbot
    total = max(chatbot.chunks.count(), 1)
    done = [ChunkEmbedding.objects.filter(chatbot=chatbot, space=version.space.store).count()]

    def counted(count: int) -> None:
        done[0] += count
        progress(min(99, int(100 * done[0] / total)))

    try:
        provider_for_space(version.space)  # an adapter loads here (weights on first use): or the version fails
        chunk_embeddings_backfill(chatbot=chatbot, space=version.space, progress=counted)
        with transaction.atomic():
            chunk_embeddings_backfill(chatbot=chatbot, space=version.space)  # what arrived meanwhile
            then()
    except DomainError as exc:
        ModelVersion.objects.filter(pk=version.pk).update(status=VStatus.CANDIDATE, error=exc.message)
        return exc.message
    except Exception as exc:
        logger.exception("embedding the space of version %s failed", version.pk)
        error = f"Deploy failed: {type(exc).__name__}: {exc}"[:2000]
        ModelVersion.objects.filter(pk=version.pk).update(status=VStatus.FAILED, error=error)
        ChatbotSpace.objects.filter(chatbot=chatbot, space=version.space).update(role=ChatbotSpace.Role.RETIRED)
        return error
    return None


def model_version_hold(chatbot: Chatbot, version: ModelVersion) -> None:
    """The chatbot holds the version's space as ``building``: new documents are embedded into it
    too while the rest is re-embedded (``model_version_embed``)."""
    chatbot_space_add(chatbot=chatbot, model_key=version.space.model_key, version=version.space.version,
                      tenant_owned=True)  # fmt: skip
    ChatbotSpace.objects.filter(chatbot=chatbot, space=version.space).update(role=ChatbotSpace.Role.BUILDING)


def _switch(chatbot: Chatbot, version: ModelVersion | None, *, space=None) -> None:
    """Make ``version`` (or the base ``space``) active; the active version becomes previous and an
    older previous is retired (its vectors and files removed by ``model_versions_retire``)."""
    target_space = version.space if version is not None else space
    ModelVersion.objects.filter(chatbot=chatbot, status=VStatus.PREVIOUS).update(status=VStatus.RETIRED)
    ModelVersion.objects.filter(chatbot=chatbot, status=VStatus.ACTIVE).update(status=VStatus.PREVIOUS)
    chatbot_space_activate(chatbot=chatbot, space=target_space)
    if version is not None:
        ModelVersion.objects.filter(pk=version.pk).update(
            status=VStatus.ACTIVE, deploy_progress=100, deployed_at=timezone.now(), error=""
        )


def model_rollback(*, tenant: Tenant, chatbot: Chatbot, user=None) -> dict:
    """The previous version (or, if the active one is the first fine-tuned version, the base
    model) serves again at once."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    with transaction.atomic():
        active = ModelVersion.objects.select_for_update().filter(chatbot=chatbot, status=VStatus.ACTIVE).first()
        previous = ModelVersion.objects.filter(chatbot=chatbot, status=VStatus.PREVIOUS).first()
        if active is None:
            raise Conflict("This chatbot serves its base model; there is nothing to roll back.")
        if ABTest.objects.filter(chatbot=chatbot, status__in=ABTest.LIVE).exists():
            raise Conflict("An A/B test is running against the active version; stop it before rolling back.")
        if previous is not None:
            target_space = previous.space
        else:
            held = (
                ChatbotSpace.objects.filter(chatbot=chatbot, space__tenant__isnull=True)
                .select_related("space")
                .order_by("-created_at")
                .first()
            )
            if held is None:
                raise Conflict("No earlier version of this chatbot's model holds vectors any more.")
            target_space = held.space
        chatbot_space_activate(chatbot=chatbot, space=target_space)
        ModelVersion.objects.filter(pk=active.pk).update(status=VStatus.CANDIDATE)
        if previous is not None:
            ModelVersion.objects.filter(pk=previous.pk).update(status=VStatus.ACTIVE, deployed_at=timezone.now())
        audit_record(
            action="model.rollback",
            tenant_id=tenant.pk,
            target=f"chatbot:{chatbot.pk}",
            rolled_back=active.number,
            serving=previous.number if previous else "base",
        )
    return {"active": previous.number if previous else None, "space": target_space.key}


def model_versions_retire() -> dict:
    """Retired versions lose their vectors and files (retention keeps the active and previous
    versions). Scheduled; idempotent."""
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("model-version-retire"):
        rows = list(
            ModelVersion.objects.filter(status=VStatus.RETIRED).values_list("pk", "tenant_id", "space_id", "chatbot_id")
        )
    removed = kept = 0
    for version_id, tenant_id, space_id, chatbot_id in rows:
        with tenant_context(tenant_id), transaction.atomic():
            version = ModelVersion.objects.select_related("space").get(pk=version_id)
            if _adapted_by_a_live_version(version.space):
                kept += 1  # a query adapter still serves (or may roll back to) these vectors
                continue
            ChatbotSpace.objects.filter(chatbot_id=chatbot_id, space_id=space_id).exclude(
                role=ChatbotSpace.Role.ACTIVE
            ).update(role=ChatbotSpace.Role.RETIRED)
            removed += ChunkEmbedding.objects.filter(chatbot_id=chatbot_id, space_id=space_id).delete()[0]
            if version.space.artifact:
                transaction.on_commit(lambda artifact=version.space.artifact: artifact_delete(artifact))
            provider_evict(version.space)
    return {"versions": len(rows) - kept, "kept_for_adapters": kept, "vectors_removed": removed}


def _adapted_by_a_live_version(space: EmbeddingSpace) -> bool:
    return (
        EmbeddingSpace.objects.filter(vectors_from=space)
        .exclude(model_version__status__in=[VStatus.RETIRED, VStatus.FAILED])
        .exists()
    )
