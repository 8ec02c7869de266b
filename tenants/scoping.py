"""Tenant scoping lives here and only here.

Two layers. In Python, every tenant-owned model inherits :class:`TenantOwned` and every read goes
through ``Model.objects.for_tenant(tenant)``. In PostgreSQL, row-level security (``tenants/rls.py``)
shows a connection only the rows of the tenant named by the transaction-local setting
``app.tenant_id`` — none when it is empty.

The scope a request, task or command works in is a context variable, entered with
:func:`tenant_context` (one tenant) or :func:`cross_tenant_context` (staff in the admin and
maintenance jobs, an explicit and named path, on the maintenance role's connection);
:class:`TenantScopeMiddleware` starts each request with none, knowing only the signed-in user
(whose own memberships are visible, to pick a tenant).
The database backend (``chatbot_training/postgresql``) turns the scope
into ``set_config(..., true)`` calls inside each transaction before its first statement, and
wraps a statement run outside a transaction in one: the setting never outlives its transaction,
so nothing carries over to the next request on a reused connection.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, TypeVar

from django.db import models

from tenants.scope import NO_SCOPE, Scope, _scope

if TYPE_CHECKING:
    from tenants.models import Tenant

T = TypeVar("T")


class TenantQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant) -> TenantQuerySet:
        if tenant is None or tenant.pk is None:
            raise ValueError("a tenant is required to read tenant-owned rows")
        return self.filter(tenant_id=tenant.pk)


class TenantOwned(models.Model):
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, db_index=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True


def current_tenant_id() -> int | None:
    return _scope.get().tenant_id


def _tenant_id(tenant) -> int:
    tenant_id = getattr(tenant, "pk", tenant)
    if tenant_id is None:
        raise ValueError("a saved tenant is required")
    return int(tenant_id)


@contextmanager
def scoped(scope: Scope) -> Iterator[None]:
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def tenant_context(tenant: Tenant | int) -> AbstractContextManager[None]:
    """The block works for one tenant (a request once its credentials are known, a task)."""
    return scoped(Scope(tenant_id=_tenant_id(tenant), user_id=_scope.get().user_id))


def cross_tenant_context(reason: str) -> AbstractContextManager[None]:
    """Every tenant's rows, for staff in the admin (audited there) and maintenance jobs (the
    sweeper, index upkeep). ``reason`` names the path. Queries in the block go to the maintenance
    role's connection (``tenants/routers.py``), the one role the policies let see every tenant;
    the reason is set on it as ``app.cross_tenant`` for ``pg_stat_activity`` and the logs."""
    if not reason:
        raise ValueError("say why the block works across tenants")
    return scoped(Scope(cross_tenant=reason[:60]))


def scope_connection():
    """The connection for raw SQL in the current scope (the ORM is routed the same way)."""
    from django.db import connections

    from tenants.routers import scope_alias

    return connections[scope_alias()]


def user_context(user_id: int) -> AbstractContextManager[None]:
    """No tenant, a signed-in user: their own memberships (and those tenants) are visible."""
    return scoped(Scope(user_id=int(user_id)))


def no_tenant_context() -> AbstractContextManager[None]:
    """Nothing tenant-owned is visible: where each request and task starts."""
    return scoped(NO_SCOPE)


def scope_kept(iterable: Iterable[T]) -> Iterator[T]:
    """``iterable`` with each step run in the scope current now: for a streamed response, whose
    body is produced after the request (and its scope) has ended, when nothing would be visible."""
    scope = _scope.get()

    def steps() -> Iterator[T]:
        iterator = iter(iterable)
        while True:
            with scoped(scope):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    return steps()


def tenant_context_enter(tenant: Tenant | int) -> contextvars.Token:
    """For lifecycles that cannot use a ``with`` block (authentication, ``TenantApi``); the
    request's :class:`TenantScopeMiddleware` puts the previous scope back at its end."""
    return _scope.set(Scope(tenant_id=_tenant_id(tenant), user_id=_scope.get().user_id))


def tenant_context_exit(token: contextvars.Token) -> None:
    _scope.reset(token)


class TenantScopeMiddleware:
    """Each request starts with no tenant (a signed-in user sees only their own memberships) and
    its scope is dropped when it ends; staff in the Django admin work across tenants, and the
    audit middleware records what they open or change."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        signed_in = bool(user is not None and user.is_authenticated and getattr(user, "pk", None))
        if signed_in and user.is_staff and user.is_active and request.path.startswith("/admin/"):
            scope = Scope(user_id=user.pk, cross_tenant=f"staff-admin:{user.pk}")
        else:
            scope = Scope(user_id=user.pk if signed_in else None)
        token = _scope.set(scope)
        try:
            return self.get_response(request)
        finally:
            _scope.reset(token)
