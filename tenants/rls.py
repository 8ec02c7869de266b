"""Row-level security: which rows the app role may see and write, enforced by PostgreSQL.

Every table with a ``tenant_id`` column gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and one
policy: a row is visible and writable when its tenant is the transaction's ``app.tenant_id``, or
when the block declared itself cross-tenant (``app.cross_tenant``, set only by
``tenants.scoping.cross_tenant_context``: staff in the admin, maintenance jobs). No tenant set
means zero rows — not an error, not all rows. A few tables add what a signed-in user needs
before choosing a tenant (their own memberships and those tenants), global embedding models
(no tenant) and audit rows (anyone may add one; nobody may change one).

Applied after every ``migrate`` (``post_migrate``, as the owner), so a table added later is
covered without anyone remembering to; ``tests/test_isolation.py`` checks every table.
"""

from __future__ import annotations

import hashlib
import logging

logger = logging.getLogger(__name__)

TENANT = "nullif(current_setting('app.tenant_id', true), '')::bigint"
USER = "nullif(current_setting('app.user_id', true), '')::bigint"
CROSS = "coalesce(current_setting('app.cross_tenant', true), '') <> ''"

OWN = f"(tenant_id = {TENANT} OR {CROSS})"

# table -> (USING, WITH CHECK); every other table with tenant_id gets (OWN, OWN).
SPECIAL = {
    "tenants_tenant": (
        f"(id = {TENANT} OR {CROSS} OR id IN (SELECT m.tenant_id FROM tenants_membership m WHERE m.user_id = {USER}))",
        f"(id = {TENANT} OR {CROSS})",
    ),
    "tenants_membership": (f"(tenant_id = {TENANT} OR {CROSS} OR user_id = {USER})", OWN),
    # built-in models have no tenant and are shared; a tenant's own (fine-tuned) model is its own
    "knowledge_embeddingspace": (f"(tenant_id IS NULL OR tenant_id = {TENANT} OR {CROSS})",) * 2,
    # written by anyone (a failed login names tenants the caller cannot read); read as OWN
    "tenants_auditevent": (OWN, "true"),
}
# The app role may add audit rows and read them, never change or remove them.
APPEND_ONLY = {"tenants_auditevent"}
READ_ONLY = {"django_migrations"}

POLICY = "tenant_isolation"


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


def _policy_sql(table: str) -> tuple[str, str]:
    return SPECIAL.get(table, (OWN, OWN))


def _fingerprint(table: str) -> str:
    using, check = _policy_sql(table)
    return hashlib.sha256(f"{using}|{check}".encode()).hexdigest()[:16]


def rls_apply(connection, *, app_role: str | None) -> list[str]:
    """Make every tenant table's policy what this module says (idempotent; changes only what
    differs) and grant the app role what it may do. Runs as the owner. Returns changed tables."""
    changed = []
    tables = tenant_tables(connection)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity,
                   obj_description(p.oid, 'pg_policy')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
            LEFT JOIN pg_policy p ON p.polrelid = c.oid AND p.polname = %s
            WHERE c.relname = ANY(%s)
            """,
            [POLICY, tables],
        )
        state = {name: (forced, comment) for name, forced, comment in cursor.fetchall()}
        for table in tables:
            fingerprint = _fingerprint(table)
            if state.get(table) == (True, fingerprint):
                continue
            using, check = _policy_sql(table)
            cursor.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            cursor.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            cursor.execute(f'DROP POLICY IF EXISTS {POLICY} ON "{table}"')
            cursor.execute(f'CREATE POLICY {POLICY} ON "{table}" USING {using} WITH CHECK ({check})')
            cursor.execute(f"COMMENT ON POLICY {POLICY} ON \"{table}\" IS '{fingerprint}'")
            changed.append(table)
        if app_role:
            _grant(cursor, app_role)
    if changed:
        logger.info("row-level security applied to %s", ", ".join(changed))
    return changed


def _grant(cursor, app_role: str) -> None:
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
        cursor.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO {role}")


def post_migrate_apply(sender, using="default", **kwargs) -> None:
    from django.conf import settings
    from django.db import connections

    from chatbot_training import dbroles

    connection = connections[using]
    app_role = settings.DATABASE_APP.get("USER") if dbroles.is_separate() else None
    if connection.settings_dict.get("USER") == app_role:
        raise RuntimeError(
            "migrate ran as the app role; it must run as the owner (DATABASE_OWNER_URL): "
            "use `python manage.py migrate`, which switches to it"
        )
    rls_apply(connection, app_role=app_role)
