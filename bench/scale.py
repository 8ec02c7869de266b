"""Scale-out on one machine: uncached search throughput with 1 vs 2 web processes, and ingestion
throughput with 1 vs 2 Celery workers, in the same run (bench/cluster.py: every process on a host
directory of its own, sharing PostgreSQL, Redis and an S3 bucket on moto's server).

The baseline is the 1-process configuration measured in this run; the figure is the ratio. With 2
cores, expect sublinear gains: both configurations share the cores with PostgreSQL, Redis, the S3
server and the load generator. CPU seconds per process kind say where the time goes.

    python bench/scale.py [--documents 16] [--rows 60] [--seconds 20] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import django
from common import ROOT, database_create

django.setup()

import psutil  # noqa: E402
import requests  # noqa: E402
from cluster import Cluster, S3Server  # noqa: E402


def faq(tag: str, rows: int) -> bytes:
    return "\n".join(
        json.dumps({"question": f"How does {tag} feature {i} work with the {tag} plan?", "answer": f"{tag} {i}: " * 8})
        for i in range(rows)
    ).encode()


def upload(url: str, headers: dict, chatbot: int, tag: str, rows: int) -> int:
    response = requests.post(
        f"{url}/api/upload-training-data",
        headers=headers,
        data={"chatbot_id": chatbot, "content_type": "faq"},
        files={"file": (f"{tag}.jsonl", faq(tag, rows))},
        timeout=60,
    )
    response.raise_for_status()
    return response.json()["document_id"]


def wait_ready(url: str, headers: dict, ids: list[int]) -> None:
    pending = set(ids)
    while pending:
        for document_id in list(pending):
            status = requests.get(f"{url}/api/documents/{document_id}/status", headers=headers, timeout=60)
            if status.json()["status"] in ("ready", "failed"):
                pending.discard(document_id)
        time.sleep(0.1)


def cpu_seconds(processes) -> float:
    total = 0.0
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            for proc in [parent, *parent.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run(config: dict, args, root: Path, s3: S3Server) -> dict:
    from django.conf import settings

    name = f"chatbot_training_bench_scale_{config['webs']}x{config['workers']}"
    urls, _ = database_create(name, fresh=True)
    env = {
        **__import__("os").environ,
        **urls,
        **s3.env(),
        "REDIS_URL": settings.REDIS_URL,
        "SEARCH_CACHE_PREFIX": f"search:{name}:{uuid.uuid4().hex[:8]}:",
        "API_RATE_LIMITS": '{"standard": 100000000}',
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "LOG_LEVEL": "WARNING",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], env=env, cwd=ROOT, check=True)
    tenant = json.loads(
        subprocess.run(
            [sys.executable, "manage.py", "create_tenant", "--name", "Scale", "--chatbot", "Scale bot", "--json"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    key, chatbot = tenant["api_key"], tenant["chatbot_id"]
    headers = {"Authorization": f"Bearer {key}"}
    result = {"webs": config["webs"], "workers": config["workers"]}
    with Cluster(env, root / name, webs=config["webs"], workers=config["workers"]) as cluster:
        web = cluster.urls
        # warm-up: small uploads until every worker has parsed one (each loads the model once)
        for round_ in range(10):
            warm = [upload(web[i % len(web)], headers, chatbot, f"warm{round_}-{i}", 3) for i in range(len(web) * 2)]
            wait_ready(web[0], headers, warm)
            if all(any(t.startswith("knowledge.") for t in ran) for ran in cluster.tasks_by_worker().values()):
                break
        # ingestion: every upload at once, timed until the last is ready
        worker_cpu = cpu_seconds([p for p, _ in cluster.workers])
        started = time.perf_counter()
        ids = [upload(web[i % len(web)], headers, chatbot, f"doc{i}", args.rows) for i in range(args.documents)]
        wait_ready(web[0], headers, ids)
        seconds = time.perf_counter() - started
        chunks = args.documents * args.rows
        result["ingestion"] = {
            "documents": args.documents,
            "chunks": chunks,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(chunks / seconds, 1),
            "worker_cpu_s": round(cpu_seconds([p for p, _ in cluster.workers]) - worker_cpu, 1),
        }
        # uncached search: distinct queries from a pool of client threads, round robin over web servers
        for url in web:  # warm each web process (model loaded, connections open)
            for i in range(3):
                requests.post(f"{url}/api/search", headers=headers, json={"chatbot_id": chatbot, "query": f"warm {i}"})
        counts, errors, latencies = [0] * args.clients, [0], []
        stop = time.perf_counter() + args.seconds
        lock = threading.Lock()

        def client(index: int) -> None:
            session, n = requests.Session(), 0
            while time.perf_counter() < stop:
                url = web[(index + n) % len(web)]
                query = f"how does doc{n % args.documents} feature {n % args.rows} work {uuid.uuid4().hex[:6]}"
                t0 = time.perf_counter()
                answer = session.post(
                    f"{url}/api/search", headers=headers, json={"chatbot_id": chatbot, "query": query}, timeout=60
                )
                with lock:
                    latencies.append(time.perf_counter() - t0)
                if answer.status_code != 200 or answer.json().get("cached"):
                    errors[0] += 1
                counts[index] += 1
                n += 1

        web_cpu = cpu_seconds([p for p, _ in cluster.webs])
        psutil.cpu_percent(None)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        latencies.sort()
        result["search"] = {
            "requests": sum(counts),
            "errors_or_cached": errors[0],
            "per_s": round(sum(counts) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
            "web_cpu_s": round(cpu_seconds([p for p, _ in cluster.webs]) - web_cpu, 1),
            "machine_cpu_percent": psutil.cpu_percent(None),
        }
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    admin = urlunsplit(urlsplit(urls["DATABASE_OWNER_URL"])._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    with S3Server(root / "s3") as s3:
        one = run({"webs": 1, "workers": 1}, args, root, s3)
        two = run({"webs": 2, "workers": 2}, args, root, s3)
    summary = {
        "benchmark": "scale",
        "cores": psutil.cpu_count(),
        "baseline_1_process": one,
        "scaled_2_processes": two,
        "search_throughput_ratio": round(two["search"]["per_s"] / one["search"]["per_s"], 3),
        "ingestion_throughput_ratio": round(two["ingestion"]["chunks_per_s"] / one["ingestion"]["chunks_per_s"], 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
