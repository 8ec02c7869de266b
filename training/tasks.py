"""Celery entry points of training, on the ``training`` queue: ids in, one service call."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError


@shared_task(
    bind=True,
    name="training.training_job_run",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 300,
)
def training_job_run_task(self, *, job_id: int, tenant_id: int | None = None) -> str:
    from tenants.scoping import tenant_context
    from training import services

    tenant_id = tenant_id or services.training_job_tenant_id(job_id=job_id)
    if tenant_id is None:
        return "skipped"
    try:
        with tenant_context(tenant_id):
            # the Celery task id is the lease: a message redelivered after its worker died takes over
            return services.training_job_run(job_id=job_id, lease_token=self.request.id)
    except OperationalError as exc:
        raise self.retry(countdown=10, max_retries=10, exc=exc) from None


@shared_task(name="training.model_version_deploy", acks_late=True, reject_on_worker_lost=True, time_limit=6 * 3600)
def model_version_deploy_task(*, version_id: int, tenant_id: int) -> str:
    from tenants.scoping import tenant_context
    from training.services import model_version_deploy_run

    with tenant_context(tenant_id):
        return model_version_deploy_run(version_id=version_id)


@shared_task(name="training.training_jobs_sweep", expires=120)
def training_jobs_sweep_task() -> dict:
    from training.services import training_jobs_sweep

    return training_jobs_sweep()


@shared_task(name="training.model_versions_retire", expires=3000)
def model_versions_retire_task() -> dict:
    from training.services import model_versions_retire

    return model_versions_retire()


@shared_task(name="training.ab_test_prepare", acks_late=True, reject_on_worker_lost=True, time_limit=6 * 3600)
def ab_test_prepare_task(*, test_id: int, tenant_id: int) -> str:
    from tenants.scoping import tenant_context
    from training.services import ab_test_prepare_run

    with tenant_context(tenant_id):
        return ab_test_prepare_run(test_id=test_id)


@shared_task(name="training.ab_tests_check", expires=240)
def ab_tests_check_task() -> dict:
    from training.services import ab_tests_check

    return ab_tests_check()


@shared_task(name="training.continuous_learning", expires=800)
def continuous_learning_task() -> dict:
    from training.services import continuous_learning_run

    return continuous_learning_run()


@shared_task(name="training.evaluations_nightly", expires=80000, soft_time_limit=7200, time_limit=7500)
def evaluations_nightly_task() -> dict:
    from training.services import evaluations_nightly

    return evaluations_nightly()
