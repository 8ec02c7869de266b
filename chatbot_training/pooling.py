"""Connection pooling of the database connections (README, "Connection pooling").

Two ways, chosen by environment variables, for every Django connection of the process (the app
role's, the maintenance role's, the replicas'):

- ``DATABASE_POOL=true``: Django's psycopg pool in each process, one per alias
  (``DATABASE_POOL_MIN_SIZE``, ``DATABASE_POOL_MAX_SIZE``, ``DATABASE_POOL_TIMEOUT`` seconds a
  request waits for a free connection before it fails). A request borrows a connection and gives
  it back when it ends, so ``CONN_MAX_AGE`` is 0 (Django refuses anything else).
- ``DATABASE_PGBOUNCER=transaction``: the connections go through PgBouncer (or another pooler)
  in transaction mode, where consecutive transactions of one client may run on different server
  sessions, so nothing may rely on session state: no server-side cursors
  (``DISABLE_SERVER_SIDE_CURSORS``), no server-side prepared statements (``prepare_threshold``
  None; set ``DATABASE_PREPARE_THRESHOLD`` explicitly only for a PgBouncer >= 1.21 with
  ``max_prepared_statements``), and no ``options`` startup parameter (PgBouncer refuses it): the
  statement timeout is then the pooler's to set (``connect_query``, see README).
  ``DATABASE_PGBOUNCER=session`` (or unset) changes nothing: a session pooler keeps every session
  feature.

Session state the code relies on, and why it is safe here: the tenant scope of row-level security
is transaction-local (``set_config(..., true)`` in ``chatbot_training/postgresql``), as are the
search planner settings (``search/selectors/vectors.py``, ``knowledge/vectors.py``); a pooled connection
comes back rolled back, so it carries none of them. What is not: the fast path's ``LISTEN`` (its
listener hears nothing through a transaction pooler and the fast path then reads the database on
every request) and the session advisory lock of the vector index upkeep (a worker task), so
workers and beat connect to PostgreSQL directly (or through a session pooler); see README.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

PGBOUNCER_MODES = ("", "session", "transaction")


def configure(config: dict, env) -> dict:
    """``config`` (one entry of ``DATABASES``) with the pooling settings the environment asks for."""
    options = config.setdefault("OPTIONS", {})
    if env.bool("DATABASE_POOL", default=False):
        if env.int("DATABASE_CONN_MAX_AGE", default=0) != 0:
            raise ImproperlyConfigured(
                "DATABASE_POOL=true lends a connection to one request at a time: unset DATABASE_CONN_MAX_AGE "
                "(or set it to 0); persistent connections and the pool do not go together."
            )
        config["CONN_MAX_AGE"] = 0
        options["pool"] = pool_options(env)
    mode = env.str("DATABASE_PGBOUNCER", default="").strip().lower()
    if mode not in PGBOUNCER_MODES:
        raise ImproperlyConfigured(
            f"DATABASE_PGBOUNCER={mode!r} is not a pooling mode: use 'transaction' (PgBouncer's "
            "pool_mode = transaction), 'session', or leave it unset."
        )
    if mode == "transaction":
        # A named cursor lives in one server session; the next FETCH may reach another.
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        if not env.str("DATABASE_PREPARE_THRESHOLD", default=""):
            options["prepare_threshold"] = None
        # "-c statement_timeout=..." is a startup parameter PgBouncer rejects (before 1.20) or
        # cannot apply per client; the timeout is set on the pooler's server connections instead.
        options.pop("options", None)
    return config


def pool_options(env) -> dict:
    """``OPTIONS["pool"]``: the keyword arguments of psycopg_pool's ``ConnectionPool``."""
    min_size = env.int("DATABASE_POOL_MIN_SIZE", default=1)
    max_size = env.int("DATABASE_POOL_MAX_SIZE", default=4)
    timeout = env.float("DATABASE_POOL_TIMEOUT", default=10.0)
    if min_size < 0 or max_size < 1 or min_size > max_size:
        raise ImproperlyConfigured(
            f"DATABASE_POOL_MIN_SIZE={min_size} and DATABASE_POOL_MAX_SIZE={max_size}: the pool needs "
            "0 <= min size <= max size and a max size of at least 1 (one connection per request thread)."
        )
    if timeout <= 0:
        raise ImproperlyConfigured(f"DATABASE_POOL_TIMEOUT={timeout:g}: seconds a request waits, more than 0.")
    return {"min_size": min_size, "max_size": max_size, "timeout": timeout}
