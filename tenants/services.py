from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from tenants import inputs
from tenants.audit import audit_record
from tenants.errors import DomainError
from tenants.models import ApiKey, Chatbot, Membership, Tenant
from tenants.principal import SearchPrincipal
from tenants.scoping import tenant_context
from tenants.selectors import api_key_hash

API_KEY_PREFIX = "cbt_"


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def tenant_create(*, name: str, plan: str = "standard") -> Tenant:
    """A new tenant, created in its own scope: its id is drawn from the sequence first, so the
    row is written as the tenant it is (no cross-tenant read is needed; a slug another tenant
    holds shows only as a unique-index conflict, and the next suffix is tried)."""
    name = inputs.text(name, field="name", max_length=200)
    if not name.strip():
        raise DomainError("A tenant needs a name.", field="name")
    if plan not in settings.API_RATE_LIMITS:
        raise DomainError(f"Unknown plan {plan!r}: use one of {', '.join(settings.API_RATE_LIMITS)}.", field="plan")
    base = slugify(name)[:60] or "tenant"
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(pg_get_serial_sequence('tenants_tenant', 'id'))")
            tenant_id = cursor.fetchone()[0]
        with tenant_context(tenant_id):
            for n in range(1, 1000):
                slug = base if n == 1 else f"{base}-{n}"
                try:
                    with transaction.atomic():
                        return Tenant.objects.create(pk=tenant_id, name=name.strip(), slug=slug, plan=plan)
                except IntegrityError:
                    continue
    raise DomainError("Could not find a free short name for this tenant; choose another name.", field="name")


@transaction.atomic
def member_add(*, tenant: Tenant, user, role: str = Membership.Role.VIEWER) -> Membership:
    membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def chatbot_create(
    *,
    tenant: Tenant,
    name: str,
    description: str = "",
    embedding_model: str | None = None,
    chunk_size: int = 256,
    chunk_overlap: int = 32,
) -> Chatbot:
    name = inputs.text(name, field="name", max_length=200)
    description = inputs.text(description, field="description", max_length=5000)
    if not name.strip():
        raise DomainError("A chatbot needs a name.", field="name")
    if Chatbot.objects.for_tenant(tenant).filter(name=name.strip()).exists():
        raise DomainError(f"A chatbot named {name!r} already exists.", field="name")
    if not 32 <= chunk_size <= 8192:
        raise DomainError("chunk_size must be between 32 and 8192 tokens.", field="chunk_size")
    if not 0 <= chunk_overlap < chunk_size // 2:
        raise DomainError("chunk_overlap must be at least 0 and less than half of chunk_size.", field="chunk_overlap")
    return Chatbot.objects.create(
        tenant=tenant,
        name=name.strip(),
        description=description,
        embedding_model=embedding_model or settings.EMBEDDING_DEFAULT_MODEL,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
    )


def chatbot_content_changed(*, chatbot_id: int) -> None:
    """Bump the content version that caches of higher floors key on."""
    Chatbot.objects.filter(pk=chatbot_id).update(content_version=F("content_version") + 1)


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    chatbot: Chatbot | None = None,
    created_by=None,
    expires_at=None,
    scopes=(ApiKey.Scope.SEARCH,),
) -> IssuedApiKey:
    """A new key, shown once. ``scopes``: any of search, read, write (search only by default:
    least privilege, what a public chat widget needs)."""
    if chatbot is not None and chatbot.tenant_id != tenant.pk:
        raise DomainError("That chatbot does not belong to this tenant.", field="chatbot")
    name = inputs.text(name, field="name", max_length=200).strip()
    scopes = key_scopes_clean(scopes)
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name or "API key",
        prefix=API_KEY_PREFIX + prefix,
        key_hash=api_key_hash(raw_key),
        chatbot=chatbot,
        created_by=created_by,
        expires_at=expires_at,
        scopes=scopes,
    )
    audit_record(action="key_create", tenant_id=tenant.pk, target=f"api-key:{api_key.prefix}", scopes=scopes,
                 chatbot_id=chatbot.pk if chatbot else None)  # fmt: skip
    return IssuedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_rotate(*, tenant: Tenant, api_key_id: int, created_by=None, grace_seconds: int | None = None):
    """A new key with the old one's name, chatbot, scopes and expiry; the old key keeps working for
    ``grace_seconds`` (``API_KEY_ROTATION_GRACE_SECONDS``; 0 = it stops at once) so clients can
    switch. Returns (new issued key, old key)."""
    grace = settings.API_KEY_ROTATION_GRACE_SECONDS if grace_seconds is None else grace_seconds
    with transaction.atomic():
        old = ApiKey.objects.for_tenant(tenant).select_for_update().get(pk=api_key_id)
        if not old.is_active:
            raise DomainError("Only an active key can be rotated.", field="api_key")
        issued = api_key_create(
            tenant=tenant,
            name=old.name,
            chatbot=old.chatbot,
            created_by=created_by,
            expires_at=old.expires_at,
            scopes=old.scopes,
        )
        now = timezone.now()
        if grace <= 0:
            old.revoked_at = now
            old.save(update_fields=["revoked_at"])
        else:
            ends = now + timedelta(seconds=grace)
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
            old.save(update_fields=["expires_at"])
        audit_record(action="key_rotate", tenant_id=tenant.pk, target=f"api-key:{old.prefix}",
                     new_key=issued.api_key.prefix, old_key_until=str(old.revoked_at or old.expires_at))  # fmt: skip
    return issued, old


def key_scopes_clean(scopes) -> list[str]:
    """The given scopes in their canonical order; an unknown or empty list is refused."""
    if isinstance(scopes, str):
        scopes = [scopes]
    scopes = list(scopes or ())
    unknown = [s for s in scopes if s not in ApiKey.Scope.values]
    if unknown:
        raise DomainError(
            f"Unknown scope {str(unknown[0])[:40]!r}: use any of {', '.join(ApiKey.Scope.values)}.", field="scopes"
        )
    if not scopes:
        raise DomainError("Give the key at least one scope: search, read or write.", field="scopes")
    return [s for s in ApiKey.Scope.values if s in scopes]


def api_key_revoke(*, tenant: Tenant, api_key_id: int) -> ApiKey:
    api_key = ApiKey.objects.for_tenant(tenant).get(pk=api_key_id)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(action="key_revoke", tenant_id=tenant.pk, target=f"api-key:{api_key.prefix}")
    return api_key


TOUCH_SECONDS = 60
_touched: dict[int, float] = {}  # key id -> when this process last wrote its last_used_at


def api_key_touch(*, principal: SearchPrincipal) -> None:
    """Record a key's use to the minute, on every path (DRF, the search fast path): written when
    the row as read says it is older than that and this process has not written it within the
    last minute (a remembered row keeps its old value), so no request pays a write each time."""
    if principal.api_key_id is None:
        return
    now = timezone.now()
    if principal.last_used_at is not None and (now - principal.last_used_at).total_seconds() <= TOUCH_SECONDS:
        return
    tick = time.monotonic()
    if tick - _touched.get(principal.api_key_id, -TOUCH_SECONDS) <= TOUCH_SECONDS:
        return
    if len(_touched) > 10000:
        _touched.clear()
    _touched[principal.api_key_id] = tick
    with tenant_context(principal.tenant_id):
        ApiKey.objects.filter(pk=principal.api_key_id).update(last_used_at=now)


@dataclass(frozen=True)
class TenantBundle:
    tenant: Tenant
    chatbot: Chatbot
    username: str
    password: str
    api_key: str


@transaction.atomic
def tenant_bootstrap(
    *,
    name: str,
    chatbot_name: str,
    username: str | None = None,
    password: str | None = None,
    embedding_model: str | None = None,
    plan: str = "standard",
) -> TenantBundle:
    """Tenant + owner login + chatbot + API key in one step (the create_tenant command)."""
    tenant = tenant_create(name=name, plan=plan)
    username = username or f"{tenant.slug}-owner"
    password = password or secrets.token_urlsafe(12)
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        raise DomainError(f"User {username!r} already exists.", field="username")
    user = User.objects.create_user(username=username, password=password)
    with tenant_context(tenant):
        member_add(tenant=tenant, user=user, role=Membership.Role.OWNER)
        chatbot = chatbot_create(tenant=tenant, name=chatbot_name, embedding_model=embedding_model)
        issued = api_key_create(  # the owner's own key: everything (widget keys are made search-only)
            tenant=tenant, name=f"{chatbot_name} key", created_by=user, scopes=ApiKey.Scope.values
        )
    return TenantBundle(tenant=tenant, chatbot=chatbot, username=username, password=password, api_key=issued.raw_key)
