"""The Training tab of a chatbot in the dashboard, on the same services and selectors as the API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from search.logbuffer import search_logs_flush
from search.services import serving_for
from tenants.errors import DomainError
from tenants.selectors import chatbot_get
from tenants.views import dashboard_membership, require_write, whole_number
from training.apis import ab_test_payload, continuous_payload, job_payload, model_history, version_payload
from training.models import ABTest, TrainingJob, TrainingPair
from training.selectors import ab_tests, model_version_get, model_versions, training_job_get, training_jobs
from training.services import (
    ab_test_promote,
    ab_test_start,
    ab_test_stop,
    continuous_learning_get,
    continuous_learning_update,
    model_rollback,
    model_version_deploy,
    training_data_summary,
    training_job_cancel,
    training_job_start,
    training_pairs_collect,
    training_pairs_from_gap,
    training_pairs_upload,
)
from training.services.jobs import ADAPTER_ONLY, CONFIG, STAGE_ORDER, TYPE_DEFAULTS, default_job_type

FORM_FIELDS = ("batch_size", "num_epochs", "learning_rate", "warmup_ratio", "max_pairs", "adapter_rank")


def _type_defaults(job_type: str) -> dict:
    return {**{name: spec[3] for name, spec in CONFIG.items()}, **TYPE_DEFAULTS.get(job_type, {})}


def _stage_bars(seconds: dict) -> list[dict]:
    """A job's stage timings as the segments of one bar (percent of its total), in stage order."""
    total = sum(seconds.values()) or 1.0
    return [
        {"name": name, "seconds": seconds[name], "percent": round(100 * seconds[name] / total, 1)}
        for name in STAGE_ORDER
        if name in seconds
    ]


def _serving_now(chatbot) -> str:
    """The serving space's key, read after the page's version rows: the chatbot's content version
    is read again so a deploy that committed while the page was being read shows on both (the
    serving memo is keyed by that version)."""
    chatbot.refresh_from_db(fields=["content_version"])
    return serving_for(chatbot).space.key


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
    for job in jobs:
        job["stage_bars"] = _stage_bars(job["stage_seconds"])
    default_type = default_job_type(chatbot)
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
            "serving": _serving_now(chatbot),
            "defaults": _type_defaults(default_type),
            # each option carries its type's defaults: the form's placeholders follow the choice
            "job_types": [
                ("", f"Default: {TrainingJob.Type(default_type).label.lower()}", _type_defaults(default_type)),
                *((value, label, _type_defaults(value)) for value, label in TrainingJob.Type.choices),
            ],
            "can_write": membership.can_write,
            "continuous": continuous_payload(continuous_learning_get(chatbot=chatbot)),
            "history": model_history(tenant=membership.tenant, chatbot=chatbot),
        },
    )


@login_required
@require_POST
def continuous_learning_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)

    def save():
        changes = {
            "enabled": request.POST.get("enabled") == "on",
            "auto_deploy": request.POST.get("auto_deploy") == "on",
        }
        if request.POST.get("job_type"):
            changes["job_type"] = request.POST["job_type"]
        for name in ("min_new_pairs", "min_days_between", "auto_ab_percent"):
            if request.POST.get(name, "").strip():
                changes[name] = _number(request.POST[name], name)
        settings = continuous_learning_update(tenant=membership.tenant, chatbot=chatbot, changes=changes,
                                              user=request.user)  # fmt: skip
        return "Continuous learning is " + ("on." if settings.enabled else "off.")

    return _act(request, membership, chatbot.pk, save)


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
        job_type = request.POST.get("job_type") or default_job_type(chatbot)  # empty: the chatbot's default
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


def _act(request, membership, chatbot_id: int, action, page: str = "dashboard-training"):
    """A write button of a page (the Training tab, the A/B page): ``action()`` returns the
    success message; a refusal is shown."""
    if require_write(request, membership):
        try:
            messages.success(request, action())
        except DomainError as exc:
            messages.error(request, exc.message)
    return redirect(page, chatbot_id=chatbot_id)


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
        if version.space.vectors_from_id:
            return (
                f"Version {version.number} is being deployed: it searches the stored vectors, nothing is re-embedded."
            )
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


@login_required
def ab_test_view(request, chatbot_id: int):
    """The chatbot's A/B page: the live comparison as charts (polled from the API), the verdict
    in words, promote and stop; a start form and the earlier tests."""
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    search_logs_flush()
    tests = ab_tests(tenant=membership.tenant, chatbot=chatbot)
    live = next((t for t in tests if t.status in ABTest.LIVE), None)
    versions = model_versions(tenant=membership.tenant, chatbot=chatbot)
    return render(
        request,
        "dashboard/ab_test.html",
        {
            "chatbot": chatbot,
            "live": ab_test_payload(live) if live else None,
            "history": [ab_test_payload(t) for t in tests if t is not live],
            "candidates": [v for v in versions if v.status in ("candidate", "previous")],
            "serving": _serving_now(chatbot),
            "can_write": membership.can_write,
        },
    )


def _ab_number(request, field: str, default: int) -> int:
    value = request.POST.get(field, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DomainError(f"{field.replace('_', ' ').capitalize()} must be a whole number.", field=field) from None


@login_required
@require_POST
def ab_test_start_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)

    def start():
        if not request.POST.get("variant_version_id", "").strip():
            raise DomainError("Choose the version to test.", field="variant_version_id")
        test = ab_test_start(
            tenant=membership.tenant,
            chatbot=chatbot,
            variant_version_id=_ab_number(request, "variant_version_id", 0),
            traffic_percent=_ab_number(request, "traffic_percent", 10),
            min_searches=_ab_number(request, "min_searches", 1000),
            max_days=_ab_number(request, "max_days", 14),
            force=request.POST.get("force") == "on",
            requested_by=str(request.user),
        )
        return f"A/B test of version {test.variant.number} started: its vectors are embedded first, then it serves."

    return _act(request, membership, chatbot.pk, start, page="dashboard-ab-test")


@login_required
@require_POST
def ab_test_promote_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)

    def promote():
        test = ab_test_promote(tenant=membership.tenant, chatbot=chatbot, requested_by=str(request.user))
        return f"Version {test.variant.number} now serves every search."

    return _act(request, membership, chatbot.pk, promote, page="dashboard-ab-test")


@login_required
@require_POST
def ab_test_stop_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)

    def stop():
        ab_test_stop(tenant=membership.tenant, chatbot=chatbot, requested_by=str(request.user))
        return "A/B test stopped: the control keeps serving."

    return _act(request, membership, chatbot.pk, stop, page="dashboard-ab-test")


@login_required
@require_POST
def gap_answered_view(request, chatbot_id: int):
    """The knowledge-gaps shortcut: a gap's questions and the FAQ answer written for it become
    training pairs (back to the analytics page)."""
    from django.urls import reverse

    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    back = redirect(reverse("dashboard-search-analytics", args=[chatbot.pk]) + "?days=" +
                    str(whole_number(request.POST.get("days"), low=1, high=365) or 14))  # fmt: skip
    if require_write(request, membership):
        try:
            chunk_id = whole_number(request.POST.get("chunk_id"), low=1, high=2**63 - 1)
            if chunk_id is None:
                raise DomainError("Choose the answer that answered it.", field="chunk_id")
            added = training_pairs_from_gap(chatbot=chatbot, queries=request.POST.getlist("queries"), chunk_id=chunk_id)
            messages.success(request, f"{added} training pairs added: the next training run learns that this answer "
                                      "answers these questions.")  # fmt: skip
        except DomainError as exc:
            messages.error(request, exc.message)
    return back
