"""PostgreSQL's own statistics, read on the maintenance role's connection (``pg_monitor``: every
session's state, statement statistics) inside a cross-tenant scope that covers only these reads."""

from __future__ import annotations

from contextlib import contextmanager

from tenants.scoping import cross_tenant_context, scope_connection

# Tables whose dead tuples matter (the vector and chunk tables grow and churn with every upload).
CHURN_TABLES = ("knowledge_chunkembedding", "knowledge_chunk", "search_searchlog")
SLOW_STATEMENTS = 10


@contextmanager
def _cursor():
    with cross_tenant_context("monitoring: database figures"), scope_connection().cursor() as cursor:
        yield cursor


def _rows(cursor, sql: str, args=None) -> list[dict]:
    cursor.execute(sql, args or [])
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def connections_by_state() -> dict[str, int]:
    """Sessions of this database by state (active, idle, idle in transaction, ...)."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' GROUP BY 1"
        )
        return {state: count for state, count in cursor.fetchall()}


def max_connections() -> int:
    with _cursor() as cursor:
        cursor.execute("SELECT current_setting('max_connections')::int")
        return cursor.fetchone()[0]


def cache_hit_ratio() -> float | None:
    """Share of table and index block reads served from PostgreSQL's buffers (since stats reset)."""
    with _cursor() as cursor:
        cursor.execute("SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()")
        hit, read = cursor.fetchone()
    return round(hit / (hit + read), 4) if hit + read else None


def dead_tuple_ratio(tables=CHURN_TABLES) -> float:
    """The largest dead / (live + dead) tuple share among ``tables``: what VACUUM has to reclaim."""
    with _cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(max(n_dead_tup::float / nullif(n_live_tup + n_dead_tup, 0)), 0) "
            "FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            [list(tables)],
        )
        return round(cursor.fetchone()[0], 4)


def tables() -> list[dict]:
    with _cursor() as cursor:
        return _rows(
            cursor,
            """
            SELECT relname AS table, n_live_tup AS live_tuples, n_dead_tup AS dead_tuples,
                   pg_table_size(relid) AS table_bytes, pg_indexes_size(relid) AS index_bytes,
                   pg_total_relation_size(relid) AS total_bytes, seq_scan, idx_scan,
                   last_autovacuum, last_vacuum, last_autoanalyze
            FROM pg_stat_user_tables WHERE schemaname = 'public' ORDER BY pg_total_relation_size(relid) DESC
            """,
        )


def indexes(limit: int = 100) -> list[dict]:
    with _cursor() as cursor:
        return _rows(
            cursor,
            """
            SELECT s.indexrelname AS index, s.relname AS table, pg_relation_size(s.indexrelid) AS bytes,
                   s.idx_scan AS scans, s.idx_tup_read AS tuples_read, am.amname AS method
            FROM pg_stat_user_indexes s JOIN pg_class c ON c.oid = s.indexrelid JOIN pg_am am ON am.oid = c.relam
            WHERE s.schemaname = 'public' ORDER BY pg_relation_size(s.indexrelid) DESC LIMIT %s
            """,
            [limit],
        )


def vector_indexes() -> list[dict]:
    """Every HNSW index with its size and build state (valid, being built, failed)."""
    with _cursor() as cursor:
        found = _rows(
            cursor,
            """
            SELECT c.relname AS index, t.relname AS table, pg_relation_size(c.oid) AS bytes,
                   i.indisvalid AS valid, i.indisready AS ready, pg_get_expr(i.indpred, i.indrelid) AS predicate,
                   coalesce(s.idx_scan, 0) AS scans
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
            JOIN pg_am am ON am.oid = c.relam LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = c.oid
            WHERE am.amname = 'hnsw' ORDER BY c.relname
            """,
        )
        building = {
            row["index"]: row
            for row in _rows(
                cursor,
                "SELECT c.relname AS index, p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total "
                "FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid",
            )
        }
    for row in found:
        progress = building.get(row["index"])
        row["state"] = "building" if progress else ("valid" if row["valid"] else "invalid")
        if progress:
            total = progress["tuples_total"] or progress["blocks_total"] or 0
            done = progress["tuples_done"] if progress["tuples_total"] else progress["blocks_done"]
            row["build"] = {"phase": progress["phase"], "percent": round(100 * done / total) if total else None}
    return found


def long_running() -> dict:
    """The longest running statement and the oldest open transaction of this database."""
    with _cursor() as cursor:
        query = _rows(
            cursor,
            """
            SELECT pid, usename AS role, state, extract(epoch FROM now() - query_start) AS seconds,
                   left(query, 300) AS query
            FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
              AND backend_type = 'client backend' ORDER BY query_start LIMIT 1
            """,
        )
        transaction = _rows(
            cursor,
            """
            SELECT pid, usename AS role, state, extract(epoch FROM now() - xact_start) AS seconds,
                   left(query, 300) AS query
            FROM pg_stat_activity WHERE datname = current_database() AND xact_start IS NOT NULL
              AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY xact_start LIMIT 1
            """,
        )
    for rows in (query, transaction):
        for row in rows:
            row["seconds"] = round(float(row["seconds"] or 0), 3)
    return {"query": query[0] if query else None, "transaction": transaction[0] if transaction else None}


def slow_statements(limit: int = SLOW_STATEMENTS) -> dict:
    """The statements with the most total time, from ``pg_stat_statements`` when it is installed."""
    with _cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
        if cursor.fetchone() is None:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
            reason = (
                "pg_stat_statements is available but not enabled: add it to shared_preload_libraries and "
                "CREATE EXTENSION pg_stat_statements."
                if cursor.fetchone()
                else "pg_stat_statements is not installed on this server (the embedded PostgreSQL does not ship "
                "it; use a server with the contrib modules to see slow statements)."
            )
            return {"available": False, "reason": reason, "statements": []}
        statements = _rows(
            cursor,
            """
            SELECT left(query, 300) AS query, calls, round(total_exec_time::numeric, 2) AS total_ms,
                   round(mean_exec_time::numeric, 3) AS mean_ms, rows
            FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY total_exec_time DESC LIMIT %s
            """,
            [limit],
        )
    return {"available": True, "statements": statements}


def server() -> dict:
    with _cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), pg_database_size(current_database())")
        version, size = cursor.fetchone()
    return {"version": version, "database_bytes": size}


def replication() -> dict:
    """The streaming replicas as the primary sees them (``pg_stat_replication``: state, how far
    behind their replay is), and which of this process's replica connections take search reads now
    (``chatbot_training/replicas.py``: False while one is left out after a failure)."""
    from chatbot_training import replicas

    with _cursor() as cursor:
        standbys = _rows(
            cursor,
            """
            SELECT application_name AS name, client_addr::text AS address, state, sync_state,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
                   round(extract(epoch FROM replay_lag)::numeric, 3)::float AS replay_lag_seconds
            FROM pg_stat_replication ORDER BY application_name, pid
            """,
        )
    return {"standbys": standbys, "search_reads": replicas.status()}


def database_figures() -> dict:
    """The whole database (staff only): what ``GET /api/metrics/database`` adds for staff."""
    connections = connections_by_state()
    return {
        **server(),
        "connections": {"by_state": connections, "total": sum(connections.values()), "max": max_connections()},
        "cache_hit_ratio": cache_hit_ratio(),
        "dead_tuple_ratio": dead_tuple_ratio(),
        "tables": tables(),
        "indexes": indexes(),
        "vector_indexes": vector_indexes(),
        "long_running": long_running(),
        "slow_statements": slow_statements(),
        "replication": replication(),
    }
