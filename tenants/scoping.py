"""Tenant scoping lives here and only here.

Every tenant-owned model inherits :class:`TenantOwned`; every read goes through
``Model.objects.for_tenant(tenant)``. Database-enforced isolation (row-level security,
``SET LOCAL app.tenant_id``) will hook into :func:`tenant_context`, which requests and tasks
already enter.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from tenants.models import Tenant

_current_tenant_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("current_tenant_id", default=None)


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


@contextmanager
def tenant_context(tenant: Tenant) -> Iterator[None]:
    """Marks the tenant a request or task works for (the hook for row-level security)."""
    token = _current_tenant_id.set(tenant.pk)
    try:
        yield
    finally:
        _current_tenant_id.reset(token)


def tenant_context_enter(tenant: Tenant) -> contextvars.Token:
    """For request lifecycles that cannot use a ``with`` block (see ``TenantApi``)."""
    return _current_tenant_id.set(tenant.pk)


def tenant_context_exit(token: contextvars.Token) -> None:
    _current_tenant_id.reset(token)


def current_tenant_id() -> int | None:
    return _current_tenant_id.get()
