"""Which connection a query uses: the app role's, or, inside ``cross_tenant_context``, the
maintenance role's (``tenants/dbroles.py``). The scope decides, not the caller, so a
cross-tenant block cannot forget to switch and a tenant's block cannot reach every tenant."""

from __future__ import annotations

from tenants.scope import current_scope

MAINTENANCE = "maintenance"


def scope_alias() -> str:
    """The database alias of the current scope."""
    return MAINTENANCE if current_scope().cross_tenant else "default"


class ScopeRouter:
    def db_for_read(self, model, **hints):
        return scope_alias()

    def db_for_write(self, model, **hints):
        return scope_alias()

    def allow_relation(self, obj1, obj2, **hints):
        return True  # one database, two roles

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == "default"
