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
    user = getattr(request, "user", None)
    authenticated = bool(user is not None and getattr(user, "is_authenticated", False) and getattr(user, "pk", None))
    return Actor(
        user_id=user.pk if authenticated else None,
        username=user.get_username() if authenticated else "",
        ip=request.META.get("REMOTE_ADDR") or None,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:300],
    )


def actor_set(actor: Actor) -> contextvars.Token:
    return _actor.set(actor)


def actor_use_api_key(prefix: str) -> None:
    _actor.set(replace(_actor.get() or NOBODY, api_key_prefix=prefix, user_id=None, username=""))


def audit_record(*, action: str, tenant_id: int | None, target: str = "", actor: Actor | None = None, **detail):
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
        AuditEvent._base_manager._insert([event], fields=fields, returning_fields=[], using="default")
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
    from django.apps import apps
    from django.urls import Resolver404, resolve

    if response.status_code >= 400:
        return
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return
    name = match.url_name or ""
    parts = name.rsplit("_", 1)
    if len(parts) != 2 or parts[1] not in ("change", "delete", "add", "changelist", "history"):
        return
    app_model, view = parts
    model = next((m for m in apps.get_models() if f"{m._meta.app_label}_{m._meta.model_name}" == app_model), None)
    if model is None or model._meta.model_name == "auditevent":
        return
    object_id = match.kwargs.get("object_id")
    tenant_id = None
    if object_id is not None and any(f.attname == "tenant_id" for f in model._meta.concrete_fields):
        tenant_id = model._default_manager.filter(pk=object_id).values_list("tenant_id", flat=True).first()
    elif model._meta.model_name == "tenant" and object_id is not None:
        tenant_id = int(object_id) if str(object_id).isdigit() else None
    if request.method == "POST":
        action = "admin_change"
    elif tenant_id is not None:
        action = "staff_access"
    else:
        return  # lists across tenants are not per-tenant access; their changes are recorded
    target = f"{model._meta.label}:{object_id}" if object_id is not None else model._meta.label
    audit_record(action=action, tenant_id=tenant_id, target=target, view=view, method=request.method,
                 path=request.path[:200])  # fmt: skip
