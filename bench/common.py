"""Helpers shared by the benchmarks: a dedicated database on the (embedded or configured) server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def database_create(name: str, *, fresh: bool) -> tuple[dict, bool]:
    """Create database ``name`` as the owner role if missing (dropped first with ``fresh``).
    Returns ``DATABASE_URL`` (app role) and ``DATABASE_OWNER_URL`` for it, and whether it was
    created now. Call after ``django.setup()``."""
    import psycopg
    from django.conf import settings

    def on(url: str, database: str) -> str:
        return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))

    with psycopg.connect(on(settings.DATABASE_OWNER_URL, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if fresh and exists:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {name}")
    urls = {
        "DATABASE_URL": on(settings.DATABASE_URL, name),
        "DATABASE_OWNER_URL": on(settings.DATABASE_OWNER_URL, name),
        "DATABASE_MAINTENANCE_URL": on(settings.DATABASE_MAINTENANCE_URL, name),
    }
    return urls, not exists


def use_database(name: str, *, fresh: bool, migrate: bool = True) -> tuple[dict, bool]:
    """Create ``name`` if missing (see ``database_create``), point Django at it, migrate (as the
    owner) unless told not to (processes that join a database their parent migrated: concurrent
    migrations collide on the grants). Returns its URLs and whether it was created now."""
    from django import db
    from django.conf import settings
    from django.core.management import call_command

    urls, created = database_create(name, fresh=fresh)
    settings.DATABASES["default"]["NAME"] = name
    settings.DATABASES["maintenance"]["NAME"] = name
    db.connections.close_all()
    with db.connection.cursor() as cursor:  # cache keys of this very database (a rebuilt one has a new oid)
        cursor.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        settings.SEARCH_CACHE_PREFIX = f"search:{name}:{cursor.fetchone()[0]}:"
    if migrate:
        call_command("migrate", verbosity=0)
    return urls, created


def multipart(fields: dict, file_name: str, content: bytes) -> tuple[bytes, str]:
    import uuid

    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    quoted = file_name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(url: str, key: str, data: bytes | None = None, content_type: str | None = None, method: str | None = None):
    """JSON of an API call with the key; raises urllib.error.HTTPError on 4xx/5xx."""
    import json
    import urllib.request

    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"}, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Stack:
    """A benchmark's own web server (the one `make run` starts: granian, chatbot_training.processes)
    and Celery worker on database ``name`` (fresh), with a tenant created by ``create_tenant``;
    stopped on exit."""

    def __init__(self, name: str, port: int, *, web_workers: int = 0, **extra_env):
        self.name, self.port, self.extra_env = name, port, extra_env
        self.web_workers = web_workers or None  # None: one per core, as `make run`
        self.processes = []

    def __enter__(self) -> Stack:
        import json
        import secrets
        import subprocess
        import time
        import uuid

        from django.conf import settings

        from chatbot_training.processes import web_command, web_env, worker_command

        urls, _ = database_create(self.name, fresh=True)
        self.owner_url = urls["DATABASE_OWNER_URL"]
        self.env = {
            **os.environ,
            **urls,
            "REDIS_URL": settings.REDIS_URL,
            "CHATBOT_KEEP_EMBEDDED": "1",
            "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
            # the database is new: so are its cache keys (chatbot ids and content versions restart)
            "SEARCH_CACHE_PREFIX": f"search:{self.name}:{uuid.uuid4().hex[:8]}:",
            "MEDIA_ROOT": str(settings.VAR_DIR / "bench-media"),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),  # as `make run`: debug off, plain HTTP on the loopback
            "API_RATE_LIMITS": '{"standard": 100000000}',  # measure the server, not the per-key limit
            "LOG_LEVEL": "WARNING",
            **{k: str(v) for k, v in self.extra_env.items()},
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run(manage + ["migrate", "-v", "0"], env=self.env, cwd=ROOT, check=True)
        self.tenant = json.loads(
            subprocess.run(
                manage + ["create_tenant", "--name", "Bench", "--chatbot", "Bench bot", "--json"],
                env=self.env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        quiet = {"cwd": ROOT, "env": self.env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        web = web_command(port=self.port, workers=self.web_workers)
        self.processes.append(subprocess.Popen(web, **{**quiet, "env": web_env(self.env)}))
        worker = worker_command(loglevel="WARNING", queue=self.env["CELERY_QUEUE"])
        self.processes.append(subprocess.Popen(worker, **quiet))
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.key, self.chatbot = self.tenant["api_key"], self.tenant["chatbot_id"]
        for _ in range(240):
            try:
                call(f"{self.api}/chatbots", self.key)
                break
            except OSError:
                time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)

    @property
    def worker(self):
        return self.processes[1]

    def create_tenant(self, name: str) -> dict:
        import json
        import subprocess

        command = [sys.executable, "manage.py", "create_tenant", "--name", name, "--chatbot", f"{name} bot", "--json"]
        done = subprocess.run(command, env=self.env, cwd=ROOT, check=True, capture_output=True, text=True)
        return json.loads(done.stdout)

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool children (a crash, not a shutdown)."""
        import psutil

        worker = self.processes[1]
        if worker.poll() is None:
            for process in [*psutil.Process(worker.pid).children(recursive=True), psutil.Process(worker.pid)]:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
        worker.wait(30)

    def start_worker(self, timeout: float = 120) -> None:
        """A new worker; returns once it answers a ping."""
        import subprocess
        import time

        from chatbot_training.celery import app
        from chatbot_training.processes import worker_command

        name = f"bench-{time.time_ns()}@localhost"
        command = worker_command(loglevel="WARNING", queue=self.env["CELERY_QUEUE"], name=name)
        self.processes[1] = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[name], timeout=0.5):
            if time.monotonic() > deadline or self.processes[1].poll() is not None:
                raise RuntimeError("the worker did not start")
