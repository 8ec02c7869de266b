from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, throttling

from tenants.audit import actor_use_api_key
from tenants.models import ApiKey
from tenants.principal import SearchPrincipal, principal_for_key
from tenants.ratelimit import (
    login_failed,
    login_succeeded,
    login_throttled_first,
    login_wait,
    rate_check,
    rate_hit,
)
from tenants.scoping import tenant_context_enter, user_context
from tenants.selectors import api_key_find_active
from tenants.services import api_key_touch


@dataclass
class ApiKeyPrincipal:
    """request.user for API-key requests: the key acts, not a person."""

    api_key: ApiKey
    principal: SearchPrincipal
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
        principal = principal_for_key(api_key)
        api_key_touch(principal=principal)
        actor_use_api_key(api_key.prefix)
        return ApiKeyPrincipal(api_key=api_key, principal=principal), api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ApiKeyRateThrottle(throttling.BaseThrottle):
    """Per-key limit of the tenant's plan (``API_RATE_LIMITS``); dashboard sessions are not
    limited here. Over the limit DRF answers 429 with Retry-After. The same counter as the search
    pipeline's (``tenants.ratelimit``), which counts search requests itself (its views opt out)."""

    def allow_request(self, request, view) -> bool:
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        if api_key is None:
            return True
        self.retry_after = rate_hit(rate_check(key_id=api_key.pk, plan=api_key.tenant.plan))
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API key created for the tenant."}


def client_address(request) -> str:
    """The client's address: ``REMOTE_ADDR``, or, when that is one of ``TRUSTED_PROXIES``, the
    last address in ``X-Forwarded-For`` that is not a trusted proxy itself."""
    if request is None:
        return "unknown"
    from django.conf import settings

    remote = request.META.get("REMOTE_ADDR") or "unknown"
    proxies = settings.TRUSTED_PROXY_NETWORKS
    if not proxies or not _in(remote, proxies):
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, proxies):
            return hop if _is_address(hop) else remote
    return remote


def _is_address(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _in(value: str, networks) -> bool:
    import ipaddress

    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in networks)


DEVICE_COOKIE = "cbt_device"
DEVICE_SALT = "tenants.login-device"
DEVICE_MAX_AGE = 365 * 24 * 3600


def device_for(request, username: str | None) -> str | None:
    """The signed device cookie of a browser that has logged in as ``username`` before, if any."""
    from django.core import signing

    raw = request.COOKIES.get(DEVICE_COOKIE, "") if request is not None else ""
    if not raw or not username:
        return None
    try:
        value = signing.loads(raw, salt=DEVICE_SALT, max_age=DEVICE_MAX_AGE)
    except signing.BadSignature:
        return None
    return raw if isinstance(value, dict) and value.get("u") == username.strip().lower() else None


def device_cookie(username: str) -> str:
    import secrets

    from django.core import signing

    return signing.dumps({"u": username.strip().lower(), "n": secrets.token_hex(8)}, salt=DEVICE_SALT)


class ThrottledModelBackend(ModelBackend):
    """Username/password logins (dashboard and admin), limited per address and, with back-off,
    per account (``tenants/ratelimit.py``); a refused attempt is not checked at all, right
    password or not. Only the first refused attempt of a throttle is written to the audit log."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        address = client_address(request)
        device = device_for(request, username)
        wait = login_wait(address=address, username=username, device=device) if username else None
        if wait is not None:
            if request is not None:
                request.login_wait = wait
            if login_throttled_first(address=address, username=username):
                self._audit(request, "login_failed", username, None, reason="throttled", wait_seconds=wait)
            raise PermissionDenied("too many failed logins")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if username:
            if user is None:
                login_failed(address=address, username=username, device=device)
                self._audit(request, "login_failed", username, None, reason="bad credentials")
            else:
                login_succeeded(address=address, username=username, device=device)
                self._audit(request, "login", username, user)
                if request is not None and device is None:
                    request.login_device_cookie = device_cookie(username)
        return user

    @staticmethod
    def _audit(request, action: str, username: str, user, **detail) -> None:
        from tenants.audit import Actor, audit_record
        from tenants.models import Membership

        address = client_address(request)
        actor = Actor(
            user_id=user.pk if user is not None else None,
            username=username[:150],
            ip=address if _is_address(address) else None,
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


class LoginDeviceCookieMiddleware:
    """Gives a browser that just logged in the device cookie its later attempts are counted by."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        value = getattr(request, "login_device_cookie", None)
        if value:
            from django.conf import settings

            response.set_cookie(
                DEVICE_COOKIE,
                value,
                max_age=DEVICE_MAX_AGE,
                httponly=True,
                secure=settings.SESSION_COOKIE_SECURE,
                samesite="Lax",
            )
        return response
