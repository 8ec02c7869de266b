"""Several "hosts" on one machine: web servers and Celery workers that share only PostgreSQL, Redis
and an S3 bucket, as a scaled-out deployment does. Used by the scale-out test
(``tests/test_scaleout.py``) and ``bench/scale.py``.

Each host is a directory of its own: its working directory, ``CHATBOT_VAR_DIR``, ``MEDIA_ROOT``
and ``TRAINING_ARTIFACTS_DIR`` — nothing on disk is shared between hosts. The S3-speaking server is
moto's (``moto_server``, a real HTTP server speaking the S3 API), started as a process of its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    children = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()


class S3Server:
    """moto's S3 server on a free loopback port with one bucket; ``env`` points the app at it."""

    def __init__(self, directory: Path, bucket: str = "chatbot-training"):
        self.directory, self.bucket = Path(directory), bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = open(self.directory / "moto.log", "w+")
        executable = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError("moto_server did not start:\n" + self.log.read()[-2000:]) from None
                time.sleep(0.2)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.process)
        self.log.close()

    def env(self) -> dict:
        return {
            "STORAGE_S3_BUCKET": self.bucket,
            "STORAGE_S3_ENDPOINT_URL": self.url,
            "STORAGE_S3_REGION": "us-east-1",
            "STORAGE_S3_ACCESS_KEY_ID": "testing",
            "STORAGE_S3_SECRET_ACCESS_KEY": "testing",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str = "") -> list[str]:
        found, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix, **extra)
            found += [item["Key"] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]


class Cluster:
    """``webs`` web servers (granian, ``web_workers`` processes each) and ``workers`` Celery
    workers (one pool process each, every queue), each on a host directory of its own under
    ``root``, all on the database, Redis and bucket of ``env``. Stopped (and the host directories
    removed) on exit."""

    def __init__(self, env: dict, root: Path, *, webs: int = 2, workers: int = 2, web_workers: int = 1, **extra):
        self.root, self.n_webs, self.n_workers, self.web_workers = Path(root), webs, workers, web_workers
        self.queue = f"cluster-{uuid.uuid4().hex[:8]}"
        self.env = {
            **env,
            "PYTHONPATH": str(ROOT),
            "CHATBOT_KEEP_EMBEDDED": "1",
            "CELERY_QUEUE": self.queue,
            "CELERY_TRAINING_QUEUE": self.queue,
            "EMBEDDING_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in extra.items()},
        }
        self.env.setdefault("DJANGO_SECRET_KEY", uuid.uuid4().hex * 2)  # one key for every host (sessions)
        self.webs: list[tuple[subprocess.Popen, str]] = []
        self.workers: list[tuple[subprocess.Popen, str]] = []
        self.logs = []

    def host(self, name: str) -> tuple[Path, dict]:
        directory = self.root / name
        for sub in ("var", "media", "models"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        env = {
            **self.env,
            "CHATBOT_VAR_DIR": str(directory / "var"),
            "MEDIA_ROOT": str(directory / "media"),
            "TRAINING_ARTIFACTS_DIR": str(directory / "models"),
            "PROMETHEUS_MULTIPROC_DIR": str(directory / "var" / "prometheus"),
        }
        (directory / "var" / "prometheus").mkdir(exist_ok=True)
        return directory, env

    def _spawn(self, name: str, command: list[str], env: dict, directory: Path) -> subprocess.Popen:
        log = open(directory / f"{name}.log", "w+")
        self.logs.append(log)
        return subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Cluster:
        from chatbot_training.celery import app
        from chatbot_training.processes import web_command, web_env, worker_command

        try:
            for index in range(self.n_webs):
                directory, env = self.host(f"web-{index}")
                port = free_port()
                command = web_command(port=port, workers=self.web_workers)
                self.webs.append((self._spawn("web", command, web_env(env), directory), f"http://127.0.0.1:{port}"))
            for index in range(self.n_workers):
                directory, env = self.host(f"worker-{index}")
                name = f"worker-{index}@{self.queue}"
                command = worker_command(loglevel="INFO", queue=self.queue, name=name)
                self.workers.append((self._spawn("worker", command, env, directory), name))
            deadline = time.monotonic() + 180
            for process, url in self.webs:
                while not self._healthy(url):
                    self._alive_or_raise(process, deadline, url)
                    time.sleep(0.3)
            for process, name in self.workers:
                while not app.control.ping(destination=[name], timeout=0.5):
                    self._alive_or_raise(process, deadline, name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _alive_or_raise(self, process, deadline: float, what: str) -> None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n" + "\n".join(self.log_tails()))

    def log_tails(self, chars: int = 2000) -> list[str]:
        tails = []
        for log in self.logs:
            log.flush()
            with open(log.name) as handle:
                tails.append(f"--- {log.name}\n{handle.read()[-chars:]}")
        return tails

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        for process, _ in [*self.webs, *self.workers]:
            _stop(process)
        for log in self.logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.webs]

    def tasks_by_worker(self) -> dict[str, dict]:
        """Tasks each worker has run since it started, by task name (Celery's own counters)."""
        from chatbot_training.celery import app

        names = [name for _, name in self.workers]
        stats = app.control.inspect(destination=names, timeout=2).stats() or {}
        return {name: stats.get(name, {}).get("total", {}) for name in names}

    def host_files(self, kind: str) -> dict[str, list[str]]:
        """Files under each host's ``kind`` directory ("media" or "models")."""
        found = {}
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            base = directory / kind
            found[directory.name] = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
        return found


def cluster_env_for_database(urls: dict, redis_url: str, prefix: str) -> dict:
    """The environment a cluster's processes need for a database (its three role URLs)."""
    return {**os.environ, **urls, "REDIS_URL": redis_url, "SEARCH_CACHE_PREFIX": prefix}
