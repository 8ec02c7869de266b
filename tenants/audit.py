"""The audit log: security-relevant actions recorded with who, when, from where and tenant.

The request's actor (user or API key, address, user agent) is kept in a context variable set by
``AuditActorMiddleware`` and by the API base when a key authenticates, so services record events
with ``audit_record(action=..., tenant=..., target=...)`` without being handed the request.
Recording never fails the action it records.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    user_id: int | None = None
    username: str = ""
    api_key_prefix: str = ""
    ip: str | None = None
    user_agent: str = ""

    @property
    def label(self) -> str:
        if self.api_key_prefix:
            return f"api-key:{self.api_key_prefix}"
        return self.username or "system"


_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor", default=None)
NOBODY = Actor()


def request_actor(request) -> Actor:
    from tenants.authentication import _is_address, client_address

    user = getattr(request, "user", None)
    authenticated = bool(user is not None and getattr(user, "is_authenticated", False) and getattr(user, "pk", None))
    address = client_address(request)
    return Actor(
        user_id=user.pk if authenticated else None,
        username=user.get_username() if authenticated else "",
        ip=address if _is_address(address) else None,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:300],
    )


def actor_set(actor: Actor) -> contextvars.Token:
    return _actor.set(actor)


def actor_use_api_key(prefix: str) -> None:
    _actor.set(replace(_actor.get() or NOBODY, api_key_prefix=prefix, user_id=None, username=""))


def audit_record(*, action: str, tenant_id: int | None, target: str = "", actor: Actor | None = None, **detail):
    from django.db import router, transaction

    from tenants.models import AuditEvent

    actor = actor or _actor.get() or NOBODY
    try:
        event = AuditEvent(
            tenant_id=tenant_id,
            action=action,
            actor=actor.label[:200],
            user_id=actor.user_id,
            api_key_prefix=actor.api_key_prefix,
            target=target[:300],
            ip=actor.ip,
            user_agent=actor.user_agent,
            detail=detail,
        )
        # No RETURNING: row-level security lets anyone add an audit row but shows it only to its
        # tenant, and a failed login is recorded for tenants the caller cannot read.
        fields = [f for f in AuditEvent._meta.local_concrete_fields if not f.primary_key]
        using = router.db_for_write(AuditEvent)
        with transaction.atomic(using=using):  # a refused row must not abort the caller's transaction
            AuditEvent._base_manager._insert([event], fields=fields, returning_fields=[], using=using)
        return event
    except Exception:  # the audit must not undo what it records; it is logged loudly instead
        logger.exception("could not record audit event %s %s", action, target)
        return None


class AuditActorMiddleware:
    """Sets the request's actor; records staff requests in the admin (every change, and every view
    of a tenant's object, attributed to that tenant)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = actor_set(request_actor(request))
        try:
            response = self.get_response(request)
            if request.path.startswith("/admin/") and getattr(request.user, "is_staff", False):
                _admin_audit(request, response)
            return response
        finally:
            _actor.reset(token)


def _admin_audit(request, response) -> None:
    """Staff reads and changes in the admin, attributed to the tenants whose rows they touched:
    a change or an object's page is one row for its tenant; a list, a search or an autocomplete
    lookup is one row per view for each tenant whose rows it showed (not one per row)."""
    from django.apps import apps
    from django.urls import Resolver404, resolve

    if response.status_code >= 400:
        return
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return
    name = match.url_name or ""
    if name == "autocomplete":
        _autocomplete_audit(request, response)
        return
    parts = name.rsplit("_", 1)
    if len(parts) != 2 or parts[1] not in ("change", "delete", "add", "changelist", "history"):
        return
    app_model, view = parts
    model = next((m for m in apps.get_models() if f"{m._meta.app_label}_{m._meta.model_name}" == app_model), None)
    if model is None or model._meta.model_name == "auditevent":
        return
    if view == "changelist" and request.method == "GET":
        _list_audit(request, response, model)
        return
    object_id = match.kwargs.get("object_id")
    tenant_id = None
    if object_id is not None and _tenant_owned(model):
        tenant_id = model._default_manager.filter(pk=object_id).values_list("tenant_id", flat=True).first()
    elif model._meta.model_name == "tenant" and object_id is not None:
        tenant_id = int(object_id) if str(object_id).isdigit() else None
    if request.method == "POST":
        action = "admin_change"
    elif tenant_id is not None:
        action = "staff_access"
    else:
        return
    target = f"{model._meta.label}:{object_id}" if object_id is not None else model._meta.label
    audit_record(action=action, tenant_id=tenant_id, target=target, view=view, method=request.method,
                 path=request.path[:200])  # fmt: skip


def _tenant_owned(model) -> bool:
    return any(f.attname == "tenant_id" for f in model._meta.concrete_fields)


def _shown_tenants(model, rows) -> dict[int, int]:
    """Rows shown per tenant."""
    counts: dict[int, int] = {}
    for row in rows:
        tenant_id = row.pk if model._meta.model_name == "tenant" else getattr(row, "tenant_id", None)
        if tenant_id is not None:
            counts[tenant_id] = counts.get(tenant_id, 0) + 1
    return counts


def _list_audit(request, response, model) -> None:
    if not (_tenant_owned(model) or model._meta.model_name == "tenant"):
        return
    changelist = (getattr(response, "context_data", None) or {}).get("cl")
    if changelist is None:
        return
    search = request.GET.get("q", "")[:200]
    for tenant_id, shown in _shown_tenants(model, changelist.result_list).items():
        audit_record(action="staff_access", tenant_id=tenant_id, target=model._meta.label, view="search" if search
                     else "list", rows_shown=shown, search=search, path=request.path[:200])  # fmt: skip


def _autocomplete_audit(request, response) -> None:
    import json

    from django.apps import apps

    try:
        source = apps.get_model(request.GET["app_label"], request.GET["model_name"])
        model = source._meta.get_field(request.GET["field_name"]).remote_field.model
        ids = [item["id"] for item in json.loads(response.content)["results"]]
    except (KeyError, LookupError, ValueError, TypeError, AttributeError):
        return
    if not ids or not (_tenant_owned(model) or model._meta.model_name == "tenant"):
        return
    rows = model._default_manager.filter(pk__in=ids).only("pk", *(["tenant_id"] if _tenant_owned(model) else []))
    term = request.GET.get("term", "")[:200]
    for tenant_id, shown in _shown_tenants(model, rows).items():
        audit_record(action="staff_access", tenant_id=tenant_id, target=model._meta.label, view="autocomplete",
                     rows_shown=shown, search=term, path=request.path[:200])  # fmt: skip
