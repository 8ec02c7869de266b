"""Dashboard pages for chatbots and their documents, on the same services and selectors as the API."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Sum
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from knowledge.apis import document_payload
from knowledge.models import Document
from knowledge.selectors import chunk_list, document_get, document_latest_job, document_list, document_totals
from knowledge.services import document_create, document_delete, document_reprocess
from tenants import inputs
from tenants.errors import DomainError
from tenants.selectors import chatbot_get, chatbot_list
from tenants.views import dashboard_membership, require_write


@login_required
def home(request):
    membership = dashboard_membership(request)
    chatbots = chatbot_list(tenant=membership.tenant).annotate(
        document_total=Count("documents"), chunk_total=Sum("documents__chunk_count")
    )
    return render(request, "dashboard/home.html", {"chatbots": chatbots})


@login_required
def chatbot_detail(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    documents = [document_payload(d, d.latest_job) for d in document_list(tenant=membership.tenant, chatbot=chatbot)]
    return render(
        request,
        "dashboard/chatbot.html",
        {
            "chatbot": chatbot,
            "documents": documents,
            "totals": document_totals(tenant=membership.tenant, chatbot=chatbot),
            "content_types": Document.ContentType.choices,
            "can_write": membership.can_write,
            "base_url": request.build_absolute_uri("/").rstrip("/"),  # what other tools call
        },
    )


@login_required
@require_POST
def chatbot_upload(request, chatbot_id: int):
    membership = dashboard_membership(request)
    chatbot = chatbot_get(tenant=membership.tenant, chatbot_id=chatbot_id)
    if not require_write(request, membership):
        return redirect("dashboard-chatbot", chatbot_id=chatbot.pk)
    files = request.FILES.getlist("files")
    if not files:
        messages.error(request, "Choose at least one file to upload.")
        return redirect("dashboard-chatbot", chatbot_id=chatbot.pk)
    try:
        metadata = inputs.json_loads(request.POST.get("metadata") or "{}", field="metadata")
        if not isinstance(metadata, dict):
            raise DomainError("not an object")
    except DomainError:
        messages.error(request, 'Metadata must be a JSON object, e.g. {"product": "router"}. Nothing was uploaded.')
        return redirect("dashboard-chatbot", chatbot_id=chatbot.pk)
    title = request.POST.get("title", "").strip()
    for upload in files:
        try:
            result = document_create(
                tenant=membership.tenant,
                chatbot=chatbot,
                upload=upload,
                content_type=request.POST.get("content_type") or Document.ContentType.DOCUMENT,
                title=title if len(files) == 1 else "",
                category=request.POST.get("category", ""),
                metadata=metadata,
                source_user_id=str(request.user.pk),
                replace=bool(request.POST.get("replace")),
            )
        except DomainError as exc:
            messages.error(request, exc.message)
            continue
        if result.duplicate:
            messages.warning(
                request,
                f"{upload.name}: identical content is already uploaded as "
                f"“{result.document.title}”; nothing new was stored.",
            )
        else:
            messages.success(request, f"{upload.name}: queued for processing.")
    return redirect("dashboard-chatbot", chatbot_id=chatbot.pk)


@login_required
def document_detail(request, document_id: int):
    membership = dashboard_membership(request)
    document = document_get(tenant=membership.tenant, document_id=document_id)
    page = Paginator(chunk_list(tenant=membership.tenant, document=document), 25).get_page(request.GET.get("page"))
    return render(
        request,
        "dashboard/document.html",
        {
            "document": document,
            "doc": document_payload(document, document_latest_job(document=document)),
            "chunks": page,
            "can_write": membership.can_write,
        },
    )


@login_required
@require_POST
def document_reprocess_view(request, document_id: int):
    membership = dashboard_membership(request)
    document = document_get(tenant=membership.tenant, document_id=document_id)
    if require_write(request, membership):
        try:
            document_reprocess(tenant=membership.tenant, document=document)
            messages.success(request, f"“{document.title}” queued for reprocessing.")
        except DomainError as exc:
            messages.error(request, exc.message)
    return redirect("dashboard-document", document_id=document.pk)


@login_required
@require_POST
def document_delete_view(request, document_id: int):
    membership = dashboard_membership(request)
    document = document_get(tenant=membership.tenant, document_id=document_id)
    if not require_write(request, membership):
        return redirect("dashboard-document", document_id=document.pk)
    document_delete(tenant=membership.tenant, document=document)
    messages.success(request, f"“{document.title}” and its chunks were deleted.")
    return redirect("dashboard-chatbot", chatbot_id=document.chatbot_id)
