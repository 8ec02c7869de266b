"""Fault drills against a running stack (web server + Celery worker, own database). Prints JSON.

- ``kill``: 10 × ``kill -9`` of the worker at random points while 10 documents ingest; every
  document must end with exactly the chunks a clean run gives (a control tenant ingests the same
  files without faults): 0 lost, 0 duplicated.
- ``poison``: a file that kills its parser every time (past the parser's memory limit) fails
  with a reason after at most 3 attempts while other files keep flowing.
- ``postgres``: PostgreSQL stopped for a few seconds during a search load: every answer is a 200
  or a JSON 503 with Retry-After (no HTML 500), and searches succeed again within 10 s of the
  database accepting connections.
- ``redis``: Redis stopped: searches keep answering (uncached); an upload is accepted (202) and
  processed once Redis is back — none acknowledged and lost.

The embedded PostgreSQL and Redis under ``var/`` are restarted: run it alone, not beside
``make run`` or the tests. Baseline measured in the same run: the clean ingestion of the control
tenant (seconds) and the search latency before the fault.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Stack, call, multipart  # noqa: E402

DATABASE = "chatbot_training_faults"


def document_text(number: int) -> str:
    return "\n\n".join(
        f"Section {number}.{i}. "
        + " ".join(
            f"Policy {number}-{i}-{j}: the support team handles request {number * 1000 + i * 20 + j} within "
            f"{(i + j) % 5 + 1} days and confirms by email."
            for j in range(10)
        )
        for i in range(30)
    )


def upload(api: str, key: str, chatbot: int, name: str, data: bytes) -> int:
    body, ctype = multipart({"chatbot_id": chatbot}, name, data)
    return call(f"{api}/upload-training-data", key, body, ctype)["document_id"]


def statuses(api: str, key: str, chatbot: int) -> dict:
    return call(f"{api}/training-data/{chatbot}", key)["totals"]


def sweep(stack: Stack) -> dict:
    """What beat's ingestion sweeper does, pointed at this stack's database and queue."""
    from django.db import close_old_connections

    from knowledge.services import ingestion_jobs_sweep

    close_old_connections()  # as a task run does: drop a connection a database restart broke
    return ingestion_jobs_sweep()


def wait_until(predicate, timeout: float, every: float = 0.5, on_wait=None) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return round(time.monotonic() - began, 2)
        if on_wait:
            on_wait()
        time.sleep(every)
    return None


def chunk_sets(stack: Stack, tenant_id: int) -> dict:
    import psycopg

    with psycopg.connect(stack.owner_url) as conn:
        rows = conn.execute(
            "SELECT d.original_filename, c.position, c.text FROM knowledge_chunk c "
            "JOIN knowledge_document d ON d.id = c.document_id WHERE d.tenant_id = %s ORDER BY 1, 2",
            [tenant_id],
        ).fetchall()
    sets: dict = {}
    for name, position, text in rows:
        sets.setdefault(name, []).append((position, text))
    return sets


def drill_kill(stack: Stack, kills: int, rng: random.Random) -> dict:
    files = [(f"policy-{n}.txt", document_text(n).encode()) for n in range(10)]
    control = stack.create_tenant("Control")
    began = time.monotonic()
    for name, data in files:
        upload(stack.api, control["api_key"], control["chatbot_id"], name, data)
    clean = wait_until(lambda: statuses(stack.api, control["api_key"], control["chatbot_id"])["ready"] == 10, 600)
    for name, data in files:
        upload(stack.api, stack.key, stack.chatbot, name, data)
    kill_log = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, 4.0))  # a random point of the running ingestion
        totals = statuses(stack.api, stack.key, stack.chatbot)
        stack.kill_worker()
        kill_log.append(totals)
        stack.start_worker()
    finished = wait_until(
        lambda: sum(statuses(stack.api, stack.key, stack.chatbot)[s] for s in ("ready", "failed")) == 10,
        900,
        every=2,
        on_wait=lambda: sweep(stack),
    )
    expected, got = chunk_sets(stack, control["tenant_id"]), chunk_sets(stack, stack.tenant["tenant_id"])
    lost = sum(len(set(expected[n]) - set(got.get(n, []))) for n in expected)
    duplicated = sum(len(got.get(n, [])) - len(set(got.get(n, []))) for n in expected)
    extra = sum(len(set(got.get(n, [])) - set(expected[n])) for n in expected)
    return {
        "documents": len(files),
        "kills": kills,
        "killed_while_processing": sum(1 for t in kill_log if t.get("processing") or t.get("queued")),
        "chunks_expected": sum(len(v) for v in expected.values()),
        "chunks_lost": lost,
        "chunks_duplicated": duplicated,
        "chunks_unexpected": extra,
        "documents_ready": statuses(stack.api, stack.key, stack.chatbot)["ready"],
        "seconds_to_finish_after_last_kill": finished,
        "baseline_clean_ingest_seconds": clean,
        "elapsed_seconds": round(time.monotonic() - began, 1),
    }


def drill_poison(stack: Stack) -> dict:
    """Needs the stack started with PARSER_MEMORY_MB low enough for the poison file."""
    poison = (
        "q,a\n" + "".join(f"question {i} about the order,answer {i} with several words\n" for i in range(300_000))
    ).encode()
    tenant = stack.create_tenant("Poison")
    api, key, chatbot = stack.api, tenant["api_key"], tenant["chatbot_id"]
    began = time.monotonic()
    poison_id = upload(api, key, chatbot, "poison.csv", poison)
    others = [
        upload(api, key, chatbot, f"fine-{n}.txt", f"Opening hours {n}: nine to five.".encode()) for n in range(5)
    ]
    wait_until(lambda: statuses(api, key, chatbot)["ready"] + statuses(api, key, chatbot)["failed"] >= 6, 300)
    state = call(f"{api}/documents/{poison_id}/status", key)
    return {
        "poison_status": state["status"],
        "poison_reason": state.get("error", "")[:200],
        "poison_attempts": (state.get("job") or {}).get("attempts"),
        "other_files_ready": sum(call(f"{api}/documents/{d}/status", key)["status"] == "ready" for d in others),
        "seconds": round(time.monotonic() - began, 1),
        "worker_alive": stack.worker.poll() is None,
    }


class SearchLoad:
    """Clients sending uncached searches; every answer recorded (time, status, JSON or not)."""

    def __init__(self, stack: Stack, clients: int):
        self.stack, self.clients, self.stop = stack, clients, threading.Event()
        self.answers: list[tuple[float, int, bool, str]] = []
        self.lock = threading.Lock()

    def _client(self, number: int) -> None:
        rng = random.Random(number)
        while not self.stop.is_set():
            query = f"how many days for request {rng.randint(0, 10**9)}"
            body = json.dumps({"query": query, "chatbot_id": self.stack.chatbot}).encode()
            request = urllib.request.Request(
                f"{self.stack.api}/search",
                data=body,
                headers={"Authorization": f"Bearer {self.stack.key}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, ctype, retry = response.status, response.headers.get("Content-Type", ""), ""
                    response.read()
            except urllib.error.HTTPError as error:
                status, ctype, retry = (
                    error.code,
                    error.headers.get("Content-Type", ""),
                    error.headers.get("Retry-After", ""),
                )
                error.read()
            except OSError:
                status, ctype, retry = 0, "", ""  # the web server itself did not answer
            with self.lock:
                self.answers.append((time.monotonic(), status, ctype.startswith("application/json"), retry))
            if status != 200:
                time.sleep(0.2)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def _pg(*args: str) -> None:
    import pgserver

    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    data = ROOT / "var" / "pg"
    owner = data.stat().st_uid
    command = [str(bin_dir / "pg_ctl"), "-D", str(data), *args]
    subprocess.run(command, check=True, capture_output=True, user=owner if owner != 0 else None)


def drill_postgres(stack: Stack, clients: int = 4, down_seconds: float = 5.0) -> dict:
    with SearchLoad(stack, clients) as load:
        time.sleep(5)
        stopped = time.monotonic()
        _pg("stop", "-m", "fast", "-w")
        time.sleep(down_seconds)
        data = ROOT / "var" / "pg"  # the options pgserver starts it with: socket only, in the data directory
        _pg("start", "-w", "-l", str(data / "restart.log"), "-o", f"-h '' -k {data}")
        accepting = time.monotonic()
        time.sleep(15)
    answers = load.answers
    before = [a for a in answers if a[0] < stopped]
    after_up = [a for a in answers if a[0] >= accepting]
    first_ok = next((a[0] for a in after_up if a[1] == 200), None)
    bad = [a for a in answers if a[1] not in (200, 503) or (a[1] == 503 and not (a[2] and a[3]))]
    return {
        "requests": len(answers),
        "status_counts": {str(s): sum(1 for a in answers if a[1] == s) for s in sorted({a[1] for a in answers})},
        "not_200_or_json_503_with_retry_after": len(bad),
        "seconds_down": round(accepting - stopped, 1),
        "recovered_seconds_after_accepting": round(first_ok - accepting, 2) if first_ok else None,
        "ok_after_recovery": sum(1 for a in after_up if a[1] == 200),
        "baseline_ok_before": sum(1 for a in before if a[1] == 200),
    }


def drill_redis(stack: Stack) -> dict:
    import redis
    from django.conf import settings

    from chatbot_training import embedded

    client = redis.Redis.from_url(settings.REDIS_URL)
    with SearchLoad(stack, 2) as load:
        time.sleep(3)
        stopped = time.monotonic()
        try:
            client.shutdown(nosave=False)
        except redis.ConnectionError:
            pass
        time.sleep(3)
        began = time.monotonic()
        body, ctype = multipart({"chatbot_id": stack.chatbot}, "while-redis-down.txt", b"Parcels ship within two days.")
        try:
            accepted = call(f"{stack.api}/upload-training-data", stack.key, body, ctype)
            upload_status, document_id = 202, accepted["document_id"]
        except urllib.error.HTTPError as error:
            upload_status, document_id = error.code, None
        upload_seconds = round(time.monotonic() - began, 2)
        time.sleep(5)
        down_answers = [a for a in load.answers if a[0] >= stopped]
        embedded.redis_url()  # start it again (same data directory: its append-only file)
        back = time.monotonic()
        processed = None
        if document_id is not None:
            processed = wait_until(
                lambda: call(f"{stack.api}/documents/{document_id}/status", stack.key)["status"] == "ready",
                180,
                every=1,
                on_wait=lambda: sweep(stack),
            )
    return {
        "searches_while_down": len(down_answers),
        "searches_ok_while_down": sum(1 for a in down_answers if a[1] == 200),
        "upload_status_while_down": upload_status,
        "upload_seconds_while_down": upload_seconds,
        "upload_processed_seconds_after_redis_back": processed,
        "redis_back_at": round(back - stopped, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--drills", default="kill,poison,postgres,redis")
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    import os

    os.environ["CHATBOT_KEEP_EMBEDDED"] = "1"  # this script restarts them; it must not stop them
    import django

    django.setup()
    from common import use_database

    from chatbot_training.celery import app

    env = {
        "INGESTION_STALE_AFTER_SECONDS": 8,  # the sweeper notices a killed worker's job quickly
        "INGESTION_MAX_ATTEMPTS": 50,  # ten deliberate kills may hit one document several times
        "EMBEDDING_BATCH_SIZE": 16,
        "PARSER_MEMORY_MB": 300,  # the poison file needs more
    }
    report = {"benchmark": "faults"}
    rng = random.Random(20261125)
    with Stack(DATABASE, args.port, **env) as stack:
        use_database(DATABASE, fresh=False, migrate=False)  # the stack migrated it; this process sweeps its jobs
        from django.conf import settings

        settings.INGESTION_STALE_AFTER_SECONDS = env["INGESTION_STALE_AFTER_SECONDS"]
        app.conf.task_default_queue = stack.env["CELERY_QUEUE"]
        for drill in args.drills.split(","):
            began = time.monotonic()
            if drill == "kill":
                report["kill"] = drill_kill(stack, args.kills, rng)
            elif drill == "poison":
                report["poison"] = drill_poison(stack)
            elif drill == "postgres":
                report["postgres"] = drill_postgres(stack)
            elif drill == "redis":
                report["redis"] = drill_redis(stack)
            report[drill]["drill_seconds"] = round(time.monotonic() - began, 1)
            print(json.dumps({drill: report[drill]}), file=sys.stderr, flush=True)  # progress, in case
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
