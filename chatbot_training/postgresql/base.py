"""PostgreSQL backend (django-prometheus's, for query metrics) that applies the tenant scope.

Before the first statement of every transaction, and again whenever the scope changes inside
one, it sets ``app.tenant_id``, ``app.user_id`` and ``app.cross_tenant`` with
``set_config(..., true)`` (transaction-local). A statement outside a transaction while a scope is
set runs in a transaction of its own, so the setting still applies and ends with it. See
``tenants/scoping.py`` and ``tenants/rls.py``.
"""

from __future__ import annotations

from django.db import transaction
from django.db.backends.base.base import NO_DB_ALIAS
from django_prometheus.db.backends.postgresql import base

from tenants.scope import NO_SCOPE, current_scope

SCOPE_SQL = (
    "SELECT set_config('app.tenant_id', %s, true), set_config('app.user_id', %s, true),"
    " set_config('app.cross_tenant', %s, true)"
)


def _scoped_execute(execute, sql, params, many, context):
    connection = context["connection"]
    scope = current_scope()
    if connection.get_autocommit():
        if not any(scope):
            return execute(sql, params, many, context)
        with transaction.atomic(using=connection.alias):
            context["cursor"].cursor.execute(SCOPE_SQL, scope.settings())
            connection.scope_applied = scope
            return execute(sql, params, many, context)
    if connection.scope_applied != scope:
        context["cursor"].cursor.execute(SCOPE_SQL, scope.settings())
        connection.scope_applied = scope
    return execute(sql, params, many, context)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scope_applied = NO_SCOPE  # what this connection's open transaction has set
        if self.alias != NO_DB_ALIAS:  # the server-level connection (CREATE DATABASE) has no rows
            self.execute_wrappers.append(_scoped_execute)

    # A transaction's settings end with it (and with a rolled-back savepoint).
    def _commit(self):
        self.scope_applied = NO_SCOPE
        return super()._commit()

    def _rollback(self):
        self.scope_applied = NO_SCOPE
        return super()._rollback()

    def _savepoint_rollback(self, sid):
        # ROLLBACK TO SAVEPOINT goes through the cursor (and this wrapper) in an aborted
        # transaction: forget the settings only once it has run.
        try:
            return super()._savepoint_rollback(sid)
        finally:
            self.scope_applied = NO_SCOPE

    def _close(self):
        self.scope_applied = NO_SCOPE
        return super()._close()
