"""Dashboard pages of the tenants app: switching tenant and managing API keys."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from tenants.apis import SESSION_TENANT_KEY
from tenants.errors import DomainError
from tenants.models import ApiKey, AuditEvent, Membership
from tenants.scoping import tenant_context_enter
from tenants.selectors import api_key_list, audit_events, chatbot_get, chatbot_list, membership_get
from tenants.services import api_key_create, api_key_revoke, api_key_rotate


def dashboard_membership(request) -> Membership:
    """The member the dashboard acts as; 404 for a user in no tenant."""
    membership = membership_get(user=request.user, tenant_id=request.session.get(SESSION_TENANT_KEY))
    if membership is None:
        raise Http404("You are not a member of any tenant. Ask an owner to invite you.")
    # The rest of the request acts as this tenant (TenantScopeMiddleware ends it).
    tenant_context_enter(membership.tenant_id)
    return membership


def require_write(request, membership: Membership) -> bool:
    if membership.can_write:
        return True
    messages.error(request, "Your role is 'viewer': ask an owner or admin to make this change.")
    return False


@login_required
@require_POST
def tenant_switch(request):
    tenant_id = whole_number(request.POST.get("tenant_id"))
    membership = membership_get(user=request.user, tenant_id=tenant_id) if tenant_id else None
    if membership is None or membership.tenant_id != tenant_id:
        messages.error(request, "You are not a member of that tenant.")
        return redirect("dashboard-home")
    request.session[SESSION_TENANT_KEY] = membership.tenant_id
    return redirect("dashboard-home")


def whole_number(value, default: int | None = None, *, low: int = 1, high: int = 2**63 - 1) -> int | None:
    """A form or query value as a whole number in [low, high]; ``default`` when it is missing or
    not one (ASCII digits only: int() would also take "²" or "١")."""
    value = (value or "").strip() if isinstance(value, str) else ""
    if not value.isascii() or not value.lstrip("-").isdigit():
        return default
    number = int(value)
    return number if low <= number <= high else default


@login_required
def api_keys(request):
    membership = dashboard_membership(request)
    tenant = membership.tenant
    new_key = None
    if request.method == "POST" and require_write(request, membership):
        try:
            chatbot_id = request.POST.get("chatbot") or None
            chatbot = chatbot_get(tenant=tenant, chatbot_id=chatbot_id) if chatbot_id else None
            issued = api_key_create(
                tenant=tenant,
                name=request.POST.get("name", "").strip() or "API key",
                chatbot=chatbot,
                created_by=request.user,
                scopes=request.POST.getlist("scopes"),
            )
            new_key = issued.raw_key
            messages.success(request, "Key created. Copy it now: it is shown only once.")
        except DomainError as exc:
            messages.error(request, exc.message)
    return _api_keys_page(request, tenant, new_key)


def _api_keys_page(request, tenant, new_key: str | None):
    """The keys page; ``new_key`` is shown this once."""
    from tenants.ratelimit import limit_for

    context = {
        "plan": tenant.plan,
        "plan_limit": limit_for(tenant.plan),
        "keys": api_key_list(tenant=tenant),
        "chatbots": chatbot_list(tenant=tenant),
        "new_key": new_key,
        "scopes": [(value, label, ApiKey.SCOPE_HELP[value]) for value, label in ApiKey.Scope.choices],
    }
    return render(request, "dashboard/api_keys.html", context)


@login_required
@require_POST
def api_key_revoke_view(request, key_id: int):
    membership = dashboard_membership(request)
    if require_write(request, membership):
        try:
            key = api_key_revoke(tenant=membership.tenant, api_key_id=key_id)
        except ApiKey.DoesNotExist:
            raise Http404("No such key.") from None
        messages.success(request, f"Key {key.prefix}… revoked; it stops working at once.")
    return redirect("dashboard-api-keys")


@login_required
@require_POST
def api_key_rotate_view(request, key_id: int):
    """A new key replaces this one; the old one keeps working for the rotation grace period."""
    membership = dashboard_membership(request)
    tenant = membership.tenant
    if not require_write(request, membership):
        return redirect("dashboard-api-keys")
    try:
        issued, old = api_key_rotate(tenant=tenant, api_key_id=key_id, created_by=request.user)
    except ApiKey.DoesNotExist:
        raise Http404("No such key.") from None
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard-api-keys")
    until = "now" if old.revoked_at else f"at {old.expires_at:%Y-%m-%d %H:%M} UTC"
    messages.success(request, f"Key {old.prefix}… rotated: it stops working {until}. Copy the new key now.")
    return _api_keys_page(request, tenant, issued.raw_key)


@login_required
def audit_log(request):
    """The tenant's audit events, newest first; owners and admins only."""
    membership = dashboard_membership(request)
    if not membership.can_write:
        raise Http404("Only owners and admins see the audit log.")
    action = request.GET.get("action", "")
    if action not in AuditEvent.Action.values:
        action = ""  # an unknown filter shows everything
    events = audit_events(tenant=membership.tenant, action=action or None)[:500]
    return render(
        request,
        "dashboard/audit.html",
        {"events": events, "actions": AuditEvent.Action.choices, "action": action},
    )


class ThrottledLoginView(LoginView):
    """The dashboard login: says plainly when too many failed attempts block it (429)."""

    template_name = "dashboard/login.html"

    def post(self, request, *args, **kwargs):
        form = self.get_form()
        if form.is_valid():
            return self.form_valid(form)
        wait = getattr(request, "login_wait", None)  # set by the backend when it refused to check
        if wait is not None:
            context = self.get_context_data(form=form, throttled=throttle_message(wait))
            return self.render_to_response(context, status=429)
        return self.form_invalid(form)


def throttle_message(wait: int) -> str:
    when = f"{wait} seconds" if wait < 120 else f"about {round(wait / 60)} minutes"
    return f"Too many failed logins. Try again in {when}; the wait grows with each failed attempt."
