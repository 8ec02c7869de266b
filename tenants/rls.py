"""Row-level security: which rows the app role may see and write, enforced by PostgreSQL.

Every table with a ``tenant_id`` column gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and its
policies: a row is visible and writable when its tenant is the transaction's ``app.tenant_id``
(set by ``tenants.scoping`` from the request's or task's scope). No tenant set means zero rows —
not an error, not all rows. A few tables add what a signed-in user needs before choosing a tenant
(their own memberships and those tenants), built-in embedding models (no tenant: readable by
all, writable by none) and audit rows (added for the current tenant, or for the tenants of the
signed-in user; changed by nobody).

Every tenant's rows are visible only to the maintenance role (``tenants/dbroles.py``),
through a policy that names it: the app role is no member of it and no setting imitates it, so
an SQL injection on the app's connection reaches at most the tenant it names.

Applied after every ``migrate`` (``post_migrate``, as the owner), so a table added later is
covered without anyone remembering to; ``tests/test_isolation.py`` checks every table.
"""

from __future__ import annotations

import hashlib
import logging
from typing import NamedTuple

logger = logging.getLogger(__name__)

TENANT = "nullif(current_setting('app.tenant_id', true), '')::bigint"
USER = "nullif(current_setting('app.user_id', true), '')::bigint"
USER_TENANTS = f"(SELECT m.tenant_id FROM tenants_membership m WHERE m.user_id = {USER})"

OWN = f"(tenant_id = {TENANT})"


class Policy(NamedTuple):
    name: str
    command: str  # ALL, SELECT, INSERT, UPDATE, DELETE
    using: str | None
    check: str | None
    maintenance: bool = False  # TO the maintenance role instead of everyone

    def sql(self, table: str, maintenance_roles: tuple[str, ...]) -> str:
        to = " TO " + ", ".join(f'"{role}"' for role in maintenance_roles) if self.maintenance else ""
        using = f" USING ({self.using})" if self.using else ""
        check = f" WITH CHECK ({self.check})" if self.check else ""
        return f'CREATE POLICY {self.name} ON "{table}" FOR {self.command}{to}{using}{check}'


def _read_write(read: str, write: str, prefix: str = "tenant") -> list[Policy]:
    return [
        Policy(f"{prefix}_read", "SELECT", read, None),
        Policy(f"{prefix}_insert", "INSERT", None, write),
        Policy(f"{prefix}_update", "UPDATE", write, write),
        Policy(f"{prefix}_delete", "DELETE", write, None),
    ]


MAINTENANCE_POLICY = Policy("maintenance", "ALL", "true", "true", maintenance=True)
DEFAULT_POLICIES = [Policy("tenant_isolation", "ALL", OWN, OWN)]
SPECIAL = {
    "tenants_tenant": _read_write(f"(id = {TENANT} OR id IN {USER_TENANTS})", f"(id = {TENANT})"),
    "tenants_membership": _read_write(f"({OWN[1:-1]} OR user_id = {USER})", OWN),
    # built-in models have no tenant: every tenant reads them, none writes them (the owner's
    # app_global_space_ensure creates them); a tenant's own (fine-tuned) model is its own
    "knowledge_embeddingspace": _read_write(f"(tenant_id IS NULL OR {OWN[1:-1]})", OWN),
    # added for the current tenant, for the tenants of the signed-in user (a login is recorded
    # for each), or for none (a failed login naming nobody); read by its tenant; never changed
    "tenants_auditevent": [
        Policy("audit_read", "SELECT", OWN, None),
        Policy("audit_insert", "INSERT", None, f"(tenant_id IS NULL OR {OWN[1:-1]} OR tenant_id IN {USER_TENANTS})"),
    ],
}
# The app role may add audit rows and read them, never change or remove them.
APPEND_ONLY = {"tenants_auditevent"}
READ_ONLY = {"django_migrations"}


def tenant_tables(connection) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            WHERE c.relkind IN ('r', 'p') AND (
                EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                        AND NOT a.attisdropped)
                OR c.relname = ANY(%s))
            ORDER BY 1
            """,
            [list(SPECIAL)],
        )
        return [row[0] for row in cursor.fetchall()]


def policies_for(table: str, maintenance_roles: tuple[str, ...]) -> list[Policy]:
    policies = list(SPECIAL.get(table, DEFAULT_POLICIES))
    return [*policies, MAINTENANCE_POLICY] if maintenance_roles else policies


def _fingerprint(policy: Policy, table: str, maintenance_roles: tuple[str, ...]) -> str:
    return hashlib.sha256(policy.sql(table, maintenance_roles).encode()).hexdigest()[:16]


def rls_apply(
    connection, *, app_role: str | None, maintenance_role: str | None = None, owner_role: str | None = None
) -> list[str]:
    """Make every tenant table's policies what this module says (idempotent; changes only the
    tables that differ) and grant the app and maintenance roles what they may do. Runs as the
    owner. The maintenance policy names the maintenance role and the owner (whose SECURITY
    DEFINER lookups must find rows even where it lacks BYPASSRLS). Returns the changed tables."""
    changed = []
    tables = tenant_tables(connection)
    maintenance_roles = tuple(dict.fromkeys(r for r in (maintenance_role, owner_role) if r))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity, p.polname,
                   obj_description(p.oid, 'pg_policy')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            LEFT JOIN pg_policy p ON p.polrelid = c.oid
            WHERE c.relname = ANY(%s)
            """,
            [tables],
        )
        forced: dict[str, bool] = {}
        present: dict[str, set] = {}
        for name, is_forced, policy, comment in cursor.fetchall():
            forced[name] = is_forced
            if policy is not None:
                present.setdefault(name, set()).add((policy, comment))
        for table in tables:
            wanted = policies_for(table, maintenance_roles)
            fingerprints = {(p.name, _fingerprint(p, table, maintenance_roles)) for p in wanted}
            if forced.get(table) and present.get(table, set()) == fingerprints:
                continue
            cursor.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            cursor.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            for old, _ in present.get(table, set()):
                cursor.execute(f'DROP POLICY IF EXISTS "{old}" ON "{table}"')
            for policy in wanted:
                cursor.execute(policy.sql(table, maintenance_roles))
                fingerprint = _fingerprint(policy, table, maintenance_roles)
                cursor.execute(f"COMMENT ON POLICY {policy.name} ON \"{table}\" IS '{fingerprint}'")
            changed.append(table)
        for role in {app_role, maintenance_role} - {None, owner_role}:
            _grant(cursor, role, functions=role == app_role)
    if changed:
        logger.info("row-level security applied to %s", ", ".join(changed))
    return changed


def _grant(cursor, app_role: str, *, functions: bool = True) -> None:
    role = '"' + app_role.replace('"', "") + '"'
    cursor.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
    )
    for name, kind in cursor.fetchall():
        table = f'public."{name}"'
        if kind == "S":
            cursor.execute(f"GRANT USAGE, SELECT ON SEQUENCE {table} TO {role}")
        elif name in READ_ONLY or kind in ("v", "m"):
            cursor.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM {role}")
            cursor.execute(f"GRANT SELECT ON {table} TO {role}")
        elif name in APPEND_ONLY:
            cursor.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {role}")
            cursor.execute(f"GRANT SELECT, INSERT ON {table} TO {role}")
        else:
            cursor.execute(f"REVOKE TRUNCATE ON {table} FROM {role}")
            cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
    cursor.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' AND p.prosecdef"
    )
    for (signature,) in cursor.fetchall():  # the SECURITY DEFINER lookups: the app role only
        cursor.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
        if functions:
            cursor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def post_migrate_apply(sender, using="default", **kwargs) -> None:
    from django.conf import settings
    from django.db import connections

    from tenants import dbroles

    connection = connections[using]
    app_role = settings.DATABASE_APP.get("USER") if dbroles.is_separate() else None
    if connection.settings_dict.get("USER") == app_role:
        raise RuntimeError(
            "migrate ran as the app role; it must run as the owner (DATABASE_OWNER_URL): "
            "use `python manage.py migrate`, which switches to it"
        )
    rls_apply(
        connection,
        app_role=app_role,
        maintenance_role=dbroles.maintenance_role(),
        owner_role=connection.settings_dict.get("USER"),
    )
