from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling

from tenants.audit import actor_use_api_key
from tenants.models import ApiKey
from tenants.ratelimit import login_blocked, login_failed, login_succeeded, rate_hit
from tenants.scoping import tenant_context_enter, user_context
from tenants.selectors import api_key_find_active
from tenants.services import api_key_touch


@dataclass
class ApiKeyPrincipal:
    """request.user for API-key requests: the key acts, not a person."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk = None
    id = None

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>``. Keys are never read from the URL or the body."""

    keyword = "bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").strip()
        if not header:
            return None
        parts = header.split()
        if parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the header as 'Authorization: Bearer <api key>'.")
        api_key = api_key_find_active(raw_key=parts[1])
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        # The rest of the request acts as the key's tenant (TenantScopeMiddleware ends it).
        tenant_context_enter(api_key.tenant_id)
        api_key_touch(api_key=api_key)
        actor_use_api_key(api_key.prefix)
        return ApiKeyPrincipal(api_key=api_key), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ApiKeyRateThrottle(throttling.BaseThrottle):
    """Per-key limit of the tenant's plan (``API_RATE_LIMITS``); dashboard sessions are not
    limited here. Over the limit DRF answers 429 with Retry-After."""

    def allow_request(self, request, view) -> bool:
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        if api_key is None:
            return True
        self.retry_after = rate_hit(key_id=api_key.pk, plan=api_key.tenant.plan)
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key created for the tenant."}


def client_address(request) -> str:
    return (request.META.get("REMOTE_ADDR") or "unknown") if request is not None else "unknown"


class ThrottledModelBackend(ModelBackend):
    """Username/password logins (dashboard and admin) with a failure limit per username and
    address: after ``LOGIN_FAILURES_MAX`` failures in the window every attempt is refused, right
    password or not, until the window ends."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        address = client_address(request)
        if username and login_blocked(address=address, username=username) is not None:
            self._audit(request, "login_failed", username, None, reason="throttled")
            raise PermissionDenied("too many failed logins")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if username:
            if user is None:
                login_failed(address=address, username=username)
                self._audit(request, "login_failed", username, None, reason="bad credentials")
            else:
                login_succeeded(address=address, username=username)
                self._audit(request, "login", username, user)
        return user

    @staticmethod
    def _audit(request, action: str, username: str, user, **detail) -> None:
        from tenants.audit import Actor, audit_record
        from tenants.models import Membership

        actor = Actor(
            user_id=user.pk if user is not None else None,
            username=username[:150],
            ip=request.META.get("REMOTE_ADDR") if request is not None else None,
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:300] if request is not None else "",
        )
        from django.contrib.auth import get_user_model

        # A login (or a failed one naming an existing user) shows in the log of each tenant the
        # user belongs to: their own memberships are visible, and writable to the audit log, in a
        # scope that names the user (tenants/rls.py) — no cross-tenant read.
        if user is None:
            user = get_user_model().objects.filter(username=username).first()
        if user is None:
            audit_record(action=action, tenant_id=None, target=f"user:{username[:150]}", actor=actor, **detail)
            return
        with user_context(user.pk):
            tenants = list(Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True))
            for tenant_id in tenants or [None]:
                audit_record(action=action, tenant_id=tenant_id, target=f"user:{username[:150]}", actor=actor, **detail)
