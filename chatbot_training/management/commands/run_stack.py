"""``make run``: the embedded database and Redis, the production web server (granian, one worker
process per core, the search fast path in front of Django, persistent database connections,
static files served by granian, debug off), a Celery worker and beat. ``make dev`` (``--dev``)
serves with Django's autoreloading development server in debug mode instead.

Ctrl-C stops all of it. The children reach PostgreSQL and Redis through the URLs this process
hands them, so they share its embedded servers, which stop when this process exits.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from chatbot_training.processes import celery_command, web_command, web_env, web_workers, worker_command


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and beat on the configured (by default embedded) services."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "1")))
        parser.add_argument("--web-workers", type=int, default=web_workers())
        parser.add_argument("--dev", action="store_true", help="Django's autoreloading server in debug mode")

    def _queue_embedding_refresh(self) -> None:
        """Chunks from before contexts existed are re-embedded by the worker, in the background."""
        from knowledge import vectors
        from knowledge.tasks import chunk_embeddings_refresh_task
        from tenants.scoping import cross_tenant_context

        with cross_tenant_context("manage.py run_stack"):
            stale = vectors.chatbots_with_stale_embeddings()
        if stale:
            chunk_embeddings_refresh_task.delay()
            self.stdout.write(f"{len(stale)} chatbots have chunks to re-embed with their context; the worker does it.")

    def _metrics_files_clear(self) -> None:
        """Prometheus's multiprocess files belong to one run of the stack: a new run starts from zero
        (counters of processes that are gone would otherwise be added up for ever)."""
        folder = Path(settings.PROMETHEUS_MULTIPROC_DIR)
        for path in folder.glob("*.db"):
            path.unlink(missing_ok=True)

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("setup_periodic_tasks")
        call_command("collectstatic", interactive=False, verbosity=0)
        self._queue_embedding_refresh()
        self._metrics_files_clear()
        self.stdout.write(self.style.SUCCESS("\nDemo tenant (a new password and API key on every start):"))
        call_command("ensure_demo")

        env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "DATABASE_OWNER_URL": settings.DATABASE_OWNER_URL,  # the worker builds vector indexes as the owner
            "DATABASE_MAINTENANCE_URL": settings.DATABASE_MAINTENANCE_URL,
            "REDIS_URL": settings.REDIS_URL,
            "CHATBOT_KEEP_EMBEDDED": "1",
            "PYTHONUNBUFFERED": "1",
        }
        python = sys.executable
        host, _, port = options["addr"].rpartition(":")
        if options["dev"]:
            web = [python, "manage.py", "runserver", options["addr"], "--skip-checks"]
            # runserver starts a thread per request: a kept-open connection would outlive its thread.
            web_environment = {**env, "DJANGO_DEBUG": "1", "DATABASE_CONN_MAX_AGE": "0"}
        else:
            web = web_command(
                host=host or "127.0.0.1",
                port=int(port),
                workers=options["web_workers"],
                static_root=settings.STATIC_ROOT,
            )
            web_environment = web_env(env)
        commands = {
            "web": web,
            "worker": worker_command(concurrency=options["concurrency"], name="worker@%h"),
            "worker-training": worker_command(concurrency=1, queue=settings.CELERY_TRAINING_QUEUE, name="training@%h"),
            "beat": celery_command("beat", "-l", "INFO", "-s", str(settings.VAR_DIR / "celerybeat-schedule")),
        }
        envs = {"web": web_environment}
        children = {  # each in a process group of its own: stopping it stops what it started (granian's workers)
            name: subprocess.Popen(command, env=envs.get(name, env), cwd=settings.BASE_DIR, start_new_session=True)
            for name, command in commands.items()
        }
        server = (
            "Django's development server (debug, autoreload)"
            if options["dev"]
            else (f"granian, {options['web_workers']} worker processes")
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"\nServing http://{options['addr']}/  (dashboard), /api/docs/ (API), /admin/ (staff) with {server}. "
                "Ctrl-C stops.\n"
            )
        )

        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"{name} exited with code {child.returncode}; stopping everything.")
                    exit_code, stopping = 1, True
                    break
            time.sleep(0.5)
        for child in children.values():
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(child, signal.SIGKILL)  # whatever of its group is left (a worker it forked)
        self.stdout.write("Stopped.")
        if exit_code:
            sys.exit(exit_code)


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already
