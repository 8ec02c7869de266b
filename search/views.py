"""Dashboard pages for search: a playground, analytics with charts, and knowledge gaps."""

from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.uploadedfile import SimpleUploadedFile
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from knowledge.models import Document
from knowledge.services import document_create
from search import limits
from search.arguments import Turn, search_arguments_parse
from search.logbuffer import search_logs_flush
from search.presenters import search_payload
from search.selectors import knowledge_gaps, search_analytics
from search.services import search_answer, search_feedback_create
from tenants import inputs
from tenants.errors import DomainError
from tenants.principal import principal_for_member
from tenants.selectors import chatbot_get
from tenants.views import dashboard_membership, require_write, whole_number

PLAYGROUND_MODES = ("semantic", "hybrid", "keyword")


def _conversation(text: str) -> list[Turn]:
    """One turn per line: ``user: …`` / ``assistant: …`` (a line without a role is a user turn)."""
    turns = []
    for line in text.splitlines():
        if not line.strip():
            continue
        role, sep, content = line.partition(":")
        if sep and role.strip().lower() in ("user", "assistant", "customer", "agent"):
            role = {"customer": "user", "agent": "assistant"}.get(role.strip().lower(), role.strip().lower())
            turns.append(Turn(role=role, content=content.strip()))
        else:
            turns.append(Turn(role="user", content=line.strip()))
    return turns


def _playground_body(form: dict, *, chatbot_id: int, user_id: int) -> dict:
    """The playground's form as a ``POST /api/search`` body (its messages say what to fix in the
    form); the same parser and pipeline as the API then answer it."""
    try:
        max_results = int(form["max_results"])
    except ValueError:
        max_results = 0
    low, high = limits.MAX_RESULTS
    if not low <= max_results <= high:
        raise DomainError(f"Max results must be a number from {low} to {high}.", field="max_results")
    try:
        metadata = inputs.json_loads(form["metadata"], field="metadata") if form["metadata"] else None
    except DomainError:
        raise DomainError('Metadata filter must be JSON, e.g. {"product": "router"}.', field="metadata")
    turns = _conversation(form["conversation"])
    return {
        "query": form["q"],
        "chatbot_id": chatbot_id,
        "max_results": max_results,
        "content_types": [form["content_type"]] if form["content_type"] else None,
        "categories": [form["category"]] if form["category"] else None,
        "metadata": metadata,
        "conversation": [{"role": t.role, "content": t.content} for t in turns] or None,
        "user_id": f"dashboard-user:{user_id}",  # a sticky A/B variant per staff member
    }


@login_required
def search_playground(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    form = {
        "q": request.GET.get("q", "").strip(),
        "max_results": request.GET.get("max_results") or "5",
        "content_type": request.GET.get("content_type", ""),
        "category": request.GET.get("category", "").strip(),
        "metadata": request.GET.get("metadata", "").strip(),
        "conversation": request.GET.get("conversation", ""),
        "compare": request.GET.get("compare") or "semantic,hybrid",
    }
    columns, error = [], ""
    if form["q"]:
        try:
            body = _playground_body(form, chatbot_id=chatbot.pk, user_id=request.user.pk)
            principal = principal_for_member(membership)
            for mode in [m for m in form["compare"].split(",") if m in PLAYGROUND_MODES][:3]:
                args = search_arguments_parse({**body, "mode": mode})  # the API's own parser
                columns.append(search_payload(search_answer(principal=principal, args=args)))
        except DomainError as exc:
            error = exc.message
    return render(
        request,
        "dashboard/search_playground.html",
        {
            "chatbot": chatbot,
            "form": form,
            "columns": columns,
            "error": error,
            "content_types": Document.ContentType.choices,
            "can_write": membership.can_write,
            "compare_choices": [
                ("semantic,hybrid", "Semantic vs hybrid"),
                ("semantic,keyword", "Semantic vs keyword"),
                ("semantic,hybrid,keyword", "All three"),
            ],
        },
    )


def _days(data, default: int = 14) -> int:
    """The ``days`` parameter of a query string or form, 1–365 (the default when missing or not a number)."""
    number = whole_number(data.get("days"), low=-(2**63), high=2**63 - 1)
    return default if number is None else min(max(number, 1), 365)


@login_required
def search_log_export_view(request, chatbot_id: int):
    """The search log as CSV from the analytics page (viewers may export too)."""
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    days = _days(request.GET)
    from search.apis import search_log_csv_response

    return search_log_csv_response(tenant=membership.tenant, chatbot=chatbot, days=days)


@login_required
def search_analytics_view(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    days = _days(request.GET)
    search_logs_flush()  # include searches still queued for writing
    low = settings.SEARCH_LOW_SCORE
    stats = search_analytics(tenant=membership.tenant, chatbot_id=chatbot.pk, days=days, low_score=low)
    gaps = knowledge_gaps(tenant=membership.tenant, chatbot_id=chatbot.pk, days=days, low_score=low)[:50]
    _answers_written(chatbot, gaps)
    return render(
        request,
        "dashboard/search_analytics.html",
        {
            "chatbot": chatbot,
            "stats": stats,
            "gaps": gaps,
            "days": days,
            "day_choices": (1, 7, 14, 30, 90),
            "can_write": membership.can_write,
            "daily_json": [
                {k: d[k] for k in ("date", "searches", "p50_ms", "p95_ms", "zero_result_rate", "gaps")}
                for d in stats["daily"]
            ],
        },
    )


def _answers_written(chatbot, gaps: list[dict]) -> None:
    """Each gap answered with the shortcut below gets ``answer_chunk_id``: the chunk of the FAQ
    document written for it, for the "this answered it" button (its questions become training
    pairs)."""
    from knowledge.models import Chunk

    titles = {f"FAQ: {g['query'][:280]}": g for g in gaps}
    rows = Chunk.objects.filter(
        chatbot=chatbot, document__title__in=list(titles), document__status=Document.Status.READY
    ).values_list("document__title", "id")
    for title, chunk_id in rows:
        titles[title].setdefault("answer_chunk_id", chunk_id)


@login_required
@require_POST
def faq_answer_add(request, chatbot_id: int):
    """The knowledge-gap shortcut: one question and its answer become a FAQ document."""
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    back = redirect(reverse("dashboard-search-analytics", args=[chatbot.pk]) + f"?days={_days(request.POST)}")
    if not require_write(request, membership):
        return back
    question = request.POST.get("question", "").strip()
    answer = request.POST.get("answer", "").strip()
    if not question or not answer:
        messages.error(request, "Write both the question and its answer; nothing was added.")
        return back
    record = json.dumps({"question": question[:2000], "answer": answer[:20000]}) + "\n"
    try:
        document_create(
            tenant=membership.tenant,
            chatbot=chatbot,
            upload=SimpleUploadedFile("faq-answer.jsonl", record.encode()),
            content_type=Document.ContentType.FAQ,
            title=f"FAQ: {question[:280]}",
            category=request.POST.get("category", "").strip()[:200],
            source_user_id=str(request.user.pk),
        )
    except DomainError as exc:
        messages.error(request, exc.message)
        return back
    messages.success(request, f"FAQ answer for “{question[:80]}” added; it is searchable once processed.")
    return back


@login_required
@require_POST
def playground_feedback_view(request, chatbot_id: int):
    """A thumbs-up or -down on one result of the search playground: search feedback with the
    chunk (a training positive or known negative for that query), then back to the same search."""
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    back = request.POST.get("back", "")
    back = redirect(f"/chatbots/{chatbot.pk}/search/" + (back if back.startswith("?") else ""))
    if require_write(request, membership):
        try:
            chunk_id = whole_number(request.POST.get("chunk_id"), low=1, high=2**63 - 1)
            helpful = request.POST.get("helpful") == "1"
            search_feedback_create(tenant=membership.tenant, query_id=_uuid(request.POST.get("query_id")),
                                   helpful=helpful, chunk_id=chunk_id)  # fmt: skip
            messages.success(request, "Thanks: marked " + ("helpful." if helpful else "not helpful."))
        except DomainError as exc:
            messages.error(request, exc.message)
    return back


def _uuid(value):
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise DomainError("That search is not known.", field="query_id") from None


@login_required
def optimize_view(request, chatbot_id: int):
    """The chatbot's search optimization page: its tuning, a start form for writers, the live
    run's progress (polled from the API), the history and a before/after chart per run."""
    from search.apis.optimize import optimization_run_payload, tuning_payload
    from search.selectors import optimization_runs, search_tuning_get
    from search.services.optimize import ACTIONS, optimization_start

    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    if request.method == "POST":
        if require_write(request, membership):
            try:
                try:
                    target = float(request.POST.get("recall_target") or 0.98)
                except ValueError:
                    raise DomainError("Recall target must be a number such as 0.98.", field="recall_target") from None
                run = optimization_start(
                    tenant=membership.tenant,
                    chatbot=chatbot,
                    actions=[a for a in request.POST.getlist("actions") if a] or None,
                    recall_target=target,
                    requested_by=str(request.user),
                )
                messages.success(request, f"Optimization run {run.pk} is queued; its progress shows below.")
            except DomainError as exc:
                messages.error(request, exc.message)
        return redirect("dashboard-optimize", chatbot_id=chatbot.pk)
    runs = [optimization_run_payload(run) for run in optimization_runs(tenant=membership.tenant, chatbot_id=chatbot.pk)]
    live = next((run for run in runs if run["status"] in ("queued", "running")), None)
    last = next((run for run in runs if run["status"] == "succeeded"), None)
    analysis = (last or {}).get("results", {}).get("analyze")
    chart = [
        {
            "run": run["run_id"],
            "before": run["results"]["tune"]["before"],
            "after": run["results"]["tune"]["after"],
        }
        for run in reversed(runs)
        if "before" in run["results"].get("tune", {})
    ]
    return render(
        request,
        "dashboard/optimize.html",
        {
            "chatbot": chatbot,
            "tuning": tuning_payload(search_tuning_get(tenant=membership.tenant, chatbot_id=chatbot.pk)),
            "runs": runs,
            "live": live,
            "analysis": analysis if isinstance(analysis, dict) and "skipped" not in analysis else None,
            "chart": chart,
            "actions": ACTIONS,
            "can_write": membership.can_write,
            "defaults": {
                "ef_search": settings.SEARCH_HNSW_EF_SEARCH,
                "ef_search_own_index": settings.SEARCH_HNSW_EF_SEARCH_OWN_INDEX,
            },
        },
    )
