from __future__ import annotations

import hashlib

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import QuerySet

from tenants.errors import NotFound
from tenants.models import ApiKey, Chatbot, Membership, Tenant
from tenants.scoping import tenant_context


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_find_active(*, raw_key: str) -> ApiKey | None:
    """The key matching ``raw_key`` if it exists, is not revoked and has not expired. Its tenant
    comes from ``app_api_key_tenant`` (a SECURITY DEFINER lookup: before this the request has no
    tenant, so row-level security shows it no key); the key itself is then read as that tenant."""
    key_hash = api_key_hash(raw_key)
    with connection.cursor() as cursor:
        cursor.execute("SELECT app_api_key_tenant(%s)", [key_hash])
        tenant_id = cursor.fetchone()[0]
    if tenant_id is None:
        return None
    with tenant_context(tenant_id):
        key = ApiKey.objects.select_related("tenant", "chatbot").filter(key_hash=key_hash).first()
    if key is None or not key.is_active or not key.tenant.is_active:
        return None
    return key


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.for_tenant(tenant).select_related("chatbot").order_by("-created_at")


def membership_list(*, user: AbstractBaseUser) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user, tenant__is_active=True).select_related("tenant").order_by("tenant__name")
    )


def membership_get(*, user: AbstractBaseUser, tenant_id: int | None) -> Membership | None:
    memberships = membership_list(user=user)
    if tenant_id is not None:
        chosen = memberships.filter(tenant_id=tenant_id).first()
        if chosen is not None:
            return chosen
    return memberships.first()


def chatbot_list(*, tenant: Tenant, api_key: ApiKey | None = None) -> QuerySet[Chatbot]:
    chatbots = Chatbot.objects.for_tenant(tenant).order_by("name")
    if api_key is not None and api_key.chatbot_id is not None:
        chatbots = chatbots.filter(pk=api_key.chatbot_id)
    return chatbots


def chatbot_get(*, tenant: Tenant, chatbot_id, api_key: ApiKey | None = None) -> Chatbot:
    """The tenant's chatbot, or NotFound: another tenant's chatbot is indistinguishable from none."""
    try:
        chatbot_id = int(chatbot_id)
    except (TypeError, ValueError):
        raise NotFound("Chatbot not found.", field="chatbot_id") from None
    chatbot = chatbot_list(tenant=tenant, api_key=api_key).filter(pk=chatbot_id).first()
    if chatbot is None:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    return chatbot


def audit_events(*, tenant: Tenant, action: str | None = None):
    from tenants.models import AuditEvent

    events = AuditEvent.objects.filter(tenant_id=tenant.pk)
    return events.filter(action=action) if action else events
