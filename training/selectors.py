"""Every read of the training app, always for one tenant."""

from __future__ import annotations

from tenants.errors import NotFound
from tenants.models import ApiKey, Chatbot, Tenant
from tenants.selectors import chatbot_list
from training.models import ModelVersion, TrainingJob


def _allowed(tenant: Tenant, api_key: ApiKey | None):
    return chatbot_list(tenant=tenant, api_key=api_key).values("pk")


def training_job_get(*, tenant: Tenant, job_id, api_key: ApiKey | None = None) -> TrainingJob:
    job = (
        TrainingJob.objects.for_tenant(tenant)
        .filter(pk=job_id, chatbot__in=_allowed(tenant, api_key))
        .prefetch_related("versions")
        .first()
    )
    if job is None:
        raise NotFound("Training job not found.", field="job_id")
    return job


def training_jobs(*, tenant: Tenant, chatbot: Chatbot, limit: int = 50) -> list[TrainingJob]:
    jobs = TrainingJob.objects.for_tenant(tenant).filter(chatbot=chatbot).prefetch_related("versions")
    return list(jobs.order_by("-created_at")[:limit])


def model_version_get(*, tenant: Tenant, version_id, api_key: ApiKey | None = None) -> ModelVersion:
    version = (
        ModelVersion.objects.for_tenant(tenant)
        .filter(pk=version_id, chatbot__in=_allowed(tenant, api_key))
        .select_related("space__vectors_from", "chatbot")
        .first()
    )
    if version is None:
        raise NotFound("Model version not found.", field="version_id")
    return version


def model_versions(*, tenant: Tenant, chatbot: Chatbot) -> list[ModelVersion]:
    return list(
        ModelVersion.objects.for_tenant(tenant)
        .filter(chatbot=chatbot)
        .select_related("space__vectors_from")
        .order_by("-number")
    )
