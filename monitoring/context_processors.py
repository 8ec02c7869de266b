from monitoring.alerts.selectors import alert_counts
from tenants.scoping import tenant_context


def active_alerts(request):
    """The header's badge: active (firing + acknowledged) alerts of the current tenant."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from tenants.apis import SESSION_TENANT_KEY
    from tenants.selectors import membership_get

    membership = membership_get(user=user, tenant_id=request.session.get(SESSION_TENANT_KEY))
    if membership is None:
        return {}
    with tenant_context(membership.tenant_id):
        counts = alert_counts(tenant=membership.tenant)
    return {"active_alerts": counts}
