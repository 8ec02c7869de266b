"""The container image's entry point (``Dockerfile``: ``python -m chatbot_training.container``).

    web               granian on 0.0.0.0:$WEB_PORT (8000), $WEB_WORKERS processes (the default)
    worker            a Celery worker on the ``celery`` queue (ingestion, maintenance)
    worker-training   a Celery worker on the training queue (fine-tunes, deploys, A/B preparation)
    beat              Celery beat (django-celery-beat's database scheduler); run exactly one
    migrate           ``manage.py migrate`` (as the owner role) and ``setup_periodic_tasks``
    manage ARGS...    any ``manage.py`` command
    anything else     run as given (``bash``, ``celery ...``)

The commands are those of ``chatbot_training/processes.py``, as ``make run`` starts them; each
replaces this process (``exec``), so the container's signals reach the server or worker itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from chatbot_training.processes import celery_command, web_command, web_env, worker_command

BASE_DIR = Path(__file__).resolve().parent.parent


def command_for(argv: list[str], env: dict) -> tuple[list[str], dict]:
    """The command line and environment that ``argv`` (the container's arguments) stands for."""
    kind, *rest = argv or ["web"]
    python = sys.executable
    if kind == "web":
        static = BASE_DIR / "staticfiles"  # collected when the image is built
        command = web_command(
            host=env.get("WEB_HOST", "0.0.0.0"),  # noqa: S104 (inside a container: its own network namespace)
            port=int(env.get("WEB_PORT", "8000")),
            threads=int(env.get("WEB_THREADS", "4")),
            static_root=static if static.is_dir() else None,
        )
        return [*command[:-1], *rest, command[-1]], web_env(env)
    concurrency = int(env.get("WORKER_CONCURRENCY", "1"))
    if kind == "worker":
        queue = env.get("CELERY_QUEUE", "celery")
        return [*worker_command(concurrency=concurrency, queue=queue, name="ingestion@%h"), *rest], env
    if kind == "worker-training":
        queue = env.get("CELERY_TRAINING_QUEUE", "training")
        return [*worker_command(concurrency=1, queue=queue, name="training@%h"), *rest], env
    if kind == "beat":
        schedule = "/tmp/celerybeat-schedule"  # noqa: S108 (unused by the database scheduler, must be writable)
        return [*celery_command("beat", "-l", env.get("LOG_LEVEL", "INFO"), "-s", schedule), *rest], env
    if kind == "manage":
        return [python, str(BASE_DIR / "manage.py"), *rest], env
    return [kind, *rest], env


def migrate(env: dict) -> int:
    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    for step in (["migrate", "--noinput"], ["setup_periodic_tasks"]):
        code = subprocess.call([*manage, *step], env=env, cwd=BASE_DIR)
        if code:
            return code
    return 0


def main(argv: list[str]) -> None:
    env = dict(os.environ)
    if argv[:1] == ["migrate"]:
        sys.exit(migrate(env))
    command, env = command_for(argv, env)
    os.chdir(BASE_DIR)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
