from tenants.apis import SESSION_TENANT_KEY
from tenants.selectors import membership_get, membership_list


def current_tenant(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    membership = membership_get(user=user, tenant_id=request.session.get(SESSION_TENANT_KEY))
    return {"membership": membership, "memberships": list(membership_list(user=user))}
