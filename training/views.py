"""The Training tab of a chatbot in the dashboard, on the same services and selectors as the API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from search.services import serving_for
from tenants.errors import DomainError
from tenants.selectors import chatbot_get
from tenants.views import dashboard_membership, require_write
from training.apis import job_payload, version_payload
from training.models import TrainingJob, TrainingPair
from training.selectors import model_version_get, model_versions, training_job_get, training_jobs
from training.services import (
    model_rollback,
    model_version_deploy,
    training_data_summary,
    training_job_cancel,
    training_job_start,
    training_pairs_collect,
    training_pairs_upload,
)
from training.services.jobs import ADAPTER_DEFAULTS, ADAPTER_ONLY, CONFIG

FORM_FIELDS = ("batch_size", "num_epochs", "learning_rate", "warmup_ratio", "max_pairs", "adapter_rank")


@login_required
def training_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    summary = training_data_summary(chatbot=chatbot)
    rows = [
        {
            "source": value,
            "label": label,
            **summary["by_source"][value],
            "samples": list(TrainingPair.objects.filter(chatbot=chatbot, source=value).select_related("chunk")[:3]),
        }
        for value, label in TrainingPair.Source.choices
    ]
    jobs = [job_payload(j) for j in training_jobs(tenant=membership.tenant, chatbot=chatbot, limit=20)]
    return render(
        request,
        "dashboard/training.html",
        {
            "chatbot": chatbot,
            "summary": summary,
            "rows": rows,
            "jobs": jobs,
            "active_job": next((j for j in jobs if j["status"] in TrainingJob.ACTIVE), None),
            "versions": [version_payload(v) for v in model_versions(tenant=membership.tenant, chatbot=chatbot)],
            "serving": serving_for(chatbot).space.key,
            "defaults": {name: spec[3] for name, spec in CONFIG.items()},
            "adapter_defaults": {**{name: spec[3] for name, spec in CONFIG.items()}, **ADAPTER_DEFAULTS},
            "job_types": TrainingJob.Type.choices,
            "can_write": membership.can_write,
        },
    )


def _number(value: str, field: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DomainError(f"{field.replace('_', ' ').capitalize()} must be a number.", field=field) from None
    return int(number) if number.is_integer() else number


@login_required
@require_POST
def training_start_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    if not require_write(request, membership):
        return redirect("dashboard-training", chatbot_id=chatbot.pk)
    try:
        job_type = request.POST.get("job_type", TrainingJob.Type.INITIAL)
        config = {
            name: _number(request.POST[name], name)
            for name in FORM_FIELDS
            if request.POST.get(name, "").strip() and (name not in ADAPTER_ONLY or job_type == TrainingJob.Type.ADAPTER)
        }
        config["hard_negatives"] = request.POST.get("hard_negatives") == "on"
        config["auto_deploy"] = request.POST.get("auto_deploy") == "on"
        sources = [s for s in request.POST.getlist("sources") if s]
        if sources:
            config["sources"] = sources
        job = training_job_start(
            tenant=membership.tenant,
            chatbot=chatbot,
            job_type=job_type,
            config=config,
            requested_by=str(request.user),
        )
        messages.success(request, f"Training job {job.pk} is queued; its progress shows below.")
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("dashboard-training", chatbot_id=chatbot.pk)


@login_required
@require_POST
def training_pairs_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    if not require_write(request, membership):
        return redirect("dashboard-training", chatbot_id=chatbot.pk)
    upload = request.FILES.get("file")
    try:
        if request.POST.get("collect"):
            added = training_pairs_collect(chatbot=chatbot)
            total = sum(added.values())
            messages.success(request, f"Collected {total} new pairs" + (f" ({added})." if total else "."))
        elif upload is None:
            messages.error(request, "Choose a JSONL or CSV file of training pairs.")
        else:
            report = training_pairs_upload(chatbot=chatbot, data=upload.read(), filename=upload.name or "")
            text = f"{report.accepted} pairs added, {report.duplicates} already known, {report.rejected} rejected."
            if report.errors:
                text += " " + "; ".join(f"row {e['row']}: {e['reason']}" for e in report.errors[:5])
            (messages.warning if report.rejected else messages.success)(request, text)
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("dashboard-training", chatbot_id=chatbot.pk)


def _act(request, membership, chatbot_id: int, action):
    """A write button of the tab: ``action()`` returns the success message; a refusal is shown."""
    if require_write(request, membership):
        try:
            messages.success(request, action())
        except DomainError as exc:
            messages.error(request, exc.message)
    return redirect("dashboard-training", chatbot_id=chatbot_id)


@login_required
@require_POST
def training_cancel_view(request, job_id: int):
    membership = dashboard_membership(request)
    job = training_job_get(tenant=membership.tenant, job_id=job_id)

    def cancel():
        training_job_cancel(tenant=membership.tenant, job=job)
        return f"Training job {job.pk} will stop within one step."

    return _act(request, membership, job.chatbot_id, cancel)


@login_required
@require_POST
def model_deploy_view(request, version_id: int):
    membership = dashboard_membership(request)
    version = model_version_get(tenant=membership.tenant, version_id=version_id)

    def deploy():
        model_version_deploy(tenant=membership.tenant, version=version, force=request.POST.get("force") == "on")
        return f"Version {version.number} is being deployed: every chunk is re-embedded first."

    return _act(request, membership, version.chatbot_id, deploy)


@login_required
@require_POST
def model_rollback_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)

    def rollback():
        return f"Rolled back: {model_rollback(tenant=membership.tenant, chatbot=chatbot)['space']} serves again."

    return _act(request, membership, chatbot.pk, rollback)
