"""The three database roles: the owner (migrations, index builds), the app role and the
maintenance role.

The application connects as the app role (``DATABASE_URL``): it owns nothing, is not a superuser,
has no BYPASSRLS, and reads and writes tenant rows only as row-level security lets it: the rows of
the tenant its transaction names. Work that must see every tenant (the ingestion sweeper, vector
index upkeep, staff in the admin) runs on a second connection as the maintenance role
(``DATABASE_MAINTENANCE_URL``), which the policies name (``tenants/rls.py``) and the app role can
neither become (it is no member) nor imitate with a setting: an SQL injection in the app's
connection stays inside one tenant. ``tenants.scoping.cross_tenant_context`` is the only way code
reaches that connection (``tenants/routers.py``). The owner role (``DATABASE_OWNER_URL``) owns
every table; only ``migrate``, ``flush`` and the per-chatbot vector index builds use it.

Without a maintenance URL the owner's URL serves maintenance (the owner bypasses row-level
security); with one URL for everything the app is its own owner and maintenance role, and a
system check warns that tenants are then separated by the application alone.

``setup_sql`` is what a database administrator runs once on an external server (``manage.py
database_roles`` prints it); the embedded PostgreSQL runs it itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

OWNER_ROLE = "chatbot_owner"
APP_ROLE = "chatbot_app"
MAINTENANCE_ROLE = "chatbot_maintenance"
MAINTENANCE_ALIAS = "maintenance"  # the Django connection of cross-tenant work

# Operators the search queries use in WHERE clauses. PostgreSQL lets a non-leakproof operator
# reach an index only after the row-level security filter has run, which turns every GIN lookup
# into a filter over all the chatbot's rows; these compare values and raise no data-dependent
# errors, so they are marked leakproof (superuser only).
LEAKPROOF_FUNCTIONS = (
    "ts_match_vq(tsvector, tsquery)",
    "word_similarity_op(text, text)",
    "word_similarity_commutator_op(text, text)",
    "similarity_op(text, text)",
)


def setup_sql(
    *,
    database: str,
    owner: str = OWNER_ROLE,
    app: str = APP_ROLE,
    maintenance: str = MAINTENANCE_ROLE,
    passwords: dict | None = None,
) -> list[str]:
    """Statements (for a superuser) that create the three roles and hand the database to the owner."""
    passwords = passwords or {}

    def login(role: str) -> str:
        password = passwords.get(role)
        return "LOGIN" + (f" PASSWORD '{password}'" if password else "")

    return [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{owner}') THEN "
        f"CREATE ROLE {owner} {login(owner)} NOSUPERUSER BYPASSRLS CREATEDB NOCREATEROLE; END IF; END $$",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{app}') THEN "
        f"CREATE ROLE {app} {login(app)} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT; END IF; END $$",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{maintenance}') THEN "
        f"CREATE ROLE {maintenance} {login(maintenance)} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT; "
        "END IF; END $$",
        # nobody is a member of the maintenance role: it is reached only by logging in as it
        f"DO $$ DECLARE r record; BEGIN FOR r IN SELECT m.rolname FROM pg_auth_members a "
        f"JOIN pg_roles m ON m.oid = a.member WHERE a.roleid = '{maintenance}'::regrole LOOP "
        f"EXECUTE format('REVOKE {maintenance} FROM %I', r.rolname); END LOOP; END $$",
        f'ALTER DATABASE "{database}" OWNER TO {owner}',
        f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {app}',
        f'GRANT CONNECT ON DATABASE "{database}" TO {maintenance}',
        # the operator figures (GET /api/metrics/database): every session's state and query,
        # statement statistics; granted with INHERIT, since the role itself inherits nothing
        f"GRANT pg_monitor TO {maintenance} WITH INHERIT TRUE",
    ]


def database_sql(*, owner: str = OWNER_ROLE) -> list[str]:
    """Per-database statements for a superuser, run inside the app database (and template1 for
    test databases): extensions, leakproof search operators, objects a superuser created before."""
    statements = ["CREATE EXTENSION IF NOT EXISTS vector", "CREATE EXTENSION IF NOT EXISTS pg_trgm"]
    statements += [f"ALTER FUNCTION {function} LEAKPROOF" for function in LEAKPROOF_FUNCTIONS]
    # Tables and functions made by a superuser (an install from before the two roles) go to the
    # owner; extension members stay with the extension.
    statements.append(
        f"""DO $$ DECLARE r record; BEGIN
        FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
                   AND c.relowner <> '{owner}'::regrole
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
            EXECUTE format('ALTER TABLE public.%I OWNER TO {owner}', r.relname);
        END LOOP;
        FOR r IN SELECT p.oid::regprocedure AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'public' AND p.proowner <> '{owner}'::regrole
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
            EXECUTE format('ALTER FUNCTION %s OWNER TO {owner}', r.signature);
        END LOOP;
        END $$"""
    )
    return statements


def _credentials(source: dict) -> dict:
    return {key: source.get(key, "") for key in ("USER", "PASSWORD", "HOST", "PORT")}


def owner_settings() -> dict:
    from django.conf import settings

    return settings.DATABASE_OWNER


def is_separate() -> bool:
    from django.conf import settings

    return owner_settings().get("USER") != settings.DATABASE_APP.get("USER")


def maintenance_role() -> str | None:
    """The role the policies let see every tenant: the maintenance URL's user, unless that is the
    owner (who bypasses row-level security anyway)."""
    from django.conf import settings

    user = settings.DATABASE_MAINTENANCE.get("USER")
    return None if user == owner_settings().get("USER") and is_separate() else user


def _use(credentials: dict, alias: str = "default") -> None:
    from django.db import connections

    connection = connections[alias]
    connection.close()
    connection.settings_dict.update(credentials)


def default_use_owner() -> None:
    """Point the default connection (its shared settings, every thread) at the owner role."""
    _use(_credentials(owner_settings()))


def default_use_app() -> None:
    from django.conf import settings

    _use(_credentials(settings.DATABASE_APP))


def maintenance_use_own_role() -> None:
    """Give the maintenance connection its own settings and credentials again (the test runner
    makes every alias of one database share the default connection's settings)."""
    from django.conf import settings
    from django.db import connections

    own = {**connections["default"].settings_dict, **_credentials(settings.DATABASE_MAINTENANCE)}
    connections.settings[MAINTENANCE_ALIAS] = own
    connection = connections[MAINTENANCE_ALIAS]
    connection.close()
    connection.settings_dict = own


@contextmanager
def as_owner(alias: str = "default") -> Iterator[None]:
    """This thread's connection as the owner for the block (migrate, flush); a fresh connection
    as the app role afterwards."""
    from django.db import connections

    connection = connections[alias]
    if not is_separate():
        yield
        return
    original = connection.settings_dict
    connection.close()
    connection.settings_dict = {**original, **_credentials(owner_settings())}
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict = original


def plain_connection_params() -> dict:
    """The default connection's psycopg parameters without Django's cursor and binding options:
    for connections made beside Django's (the owner's, the fast path's LISTEN connection)."""
    from django.db import connection

    return {
        key: value
        for key, value in connection.get_connection_params().items()
        if key not in ("cursor_factory", "context", "prepare_threshold", "server_side_binding")
    }


def owner_connect(*, autocommit: bool = True):
    """A plain psycopg connection as the owner to the database the app uses (the test database in
    tests): for DDL the app role may not run, such as CREATE INDEX CONCURRENTLY."""
    import psycopg

    params = plain_connection_params()
    owner = owner_settings()
    params["user"] = owner.get("USER") or params.get("user")
    if owner.get("PASSWORD"):
        params["password"] = owner["PASSWORD"]
    for key in ("HOST", "PORT"):
        if owner.get(key):
            params[key.lower()] = owner[key]
    params["options"] = "-c statement_timeout=0"  # index builds take as long as they take
    return psycopg.connect(**params, autocommit=autocommit, connect_timeout=10)
