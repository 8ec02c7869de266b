"""Start a real Celery worker process against the test database, on a queue of its own."""

from __future__ import annotations

import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil

from chatbot_training.processes import worker_command

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def celery_worker(env: dict, **extra_env):
    from chatbot_training.celery import app

    queue = f"test-{uuid.uuid4().hex[:8]}"
    name = f"{queue}@localhost"
    log = open(ROOT / "var" / f"{queue}.log", "w+")
    process = subprocess.Popen(
        worker_command(queue=queue, name=name),
        env={**env, "CELERY_QUEUE": queue, "CELERY_TRAINING_QUEUE": queue, **{k: str(v) for k, v in extra_env.items()}},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    previous = (app.conf.task_always_eager, app.conf.task_default_queue, app.conf.task_routes)
    app.conf.task_always_eager = False
    app.conf.task_default_queue = queue
    app.conf.task_routes = {}  # every task (training's too) goes to this worker's queue
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError("the test worker did not start:\n" + log.read()[-3000:])
        yield process
    finally:
        app.conf.task_always_eager, app.conf.task_default_queue, app.conf.task_routes = previous
        children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        log.close()


def pool_children(worker: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children()
