"""End-to-end ingestion throughput (API -> Celery worker -> PostgreSQL/pgvector) against the raw
``model.encode`` speed on the same chunks, measured in the same run.

    python bench/ingest.py [--docs N] [--per-file N]

Uses the SciFact corpus from ../shared; starts its own web server and worker on a fresh
database ``chatbot_training_bench`` of the (embedded or configured) PostgreSQL. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def multipart(fields: dict, file_name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(url: str, key: str, data: bytes | None = None, content_type: str | None = None) -> dict:
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"})
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000, help="SciFact abstracts to ingest (of 5,183)")
    parser.add_argument("--per-file", type=int, default=200, help="records per uploaded JSONL file")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if not CORPUS.exists():
        print(json.dumps({"skipped": f"needs {CORPUS} (../shared is not beside this clone)"}))
        return

    import django

    django.setup()
    import psycopg
    from django.conf import settings

    from chatbot_training.processes import worker_command

    base = settings.DATABASE_URL
    admin = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    bench_url = urlunsplit(urlsplit(base)._replace(path="/chatbot_training_bench"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS chatbot_training_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE chatbot_training_bench")
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": settings.REDIS_URL,
        "CHATBOT_KEEP_EMBEDDED": "1",
        "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
        "MEDIA_ROOT": str(settings.VAR_DIR / "bench-media"),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # plain HTTP on the loopback
        "API_RATE_LIMITS": '{"standard": 100000000}',  # measure the server, not the per-key limit
        "LOG_LEVEL": "WARNING",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run(manage + ["migrate", "-v", "0"], env=env, cwd=ROOT, check=True)
    tenant = json.loads(
        subprocess.run(
            manage + ["create_tenant", "--name", "Bench", "--chatbot", "SciFact", "--json"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    web = subprocess.Popen(
        manage + ["runserver", f"127.0.0.1:{args.port}", "--noreload", "--skip-checks"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        worker_command(loglevel="WARNING", queue=env["CELERY_QUEUE"]),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{args.port}/api"
    key, chatbot = tenant["api_key"], tenant["chatbot_id"]
    try:
        for _ in range(120):
            try:
                call(f"{api}/chatbots", key)
                break
            except OSError:
                time.sleep(0.5)
        # Warm the worker's model so start-up is not counted as throughput.
        body, ctype = multipart({"chatbot_id": chatbot}, "warmup.txt", b"Warm-up document for the embedding model.")
        call(f"{api}/upload-training-data", key, body, ctype)
        while call(f"{api}/training-data/{chatbot}", key)["totals"]["ready"] < 1:
            time.sleep(0.2)
        lines = CORPUS.read_text(encoding="utf-8").splitlines()[: args.docs]
        files = [lines[i : i + args.per_file] for i in range(0, len(lines), args.per_file)]
        began = time.perf_counter()
        for number, chunk in enumerate(files):
            body, ctype = multipart(
                {"chatbot_id": chatbot, "content_type": "document"},
                f"scifact-{number}.jsonl",
                "\n".join(chunk).encode(),
            )
            call(f"{api}/upload-training-data", key, body, ctype)
        upload_seconds = time.perf_counter() - began
        while True:
            totals = call(f"{api}/training-data/{chatbot}", key)["totals"]
            if totals["ready"] + totals["failed"] >= len(files) + 1:
                break
            time.sleep(0.25)
        end_to_end = time.perf_counter() - began
    finally:
        worker.terminate()
        web.terminate()
        worker.wait(30)
        web.wait(30)

    with psycopg.connect(bench_url) as conn:
        texts = [
            row[0]
            for row in conn.execute(
                "SELECT c.text FROM knowledge_chunk c JOIN knowledge_document d ON d.id = c.document_id "
                "WHERE d.title LIKE 'scifact-%%' ORDER BY d.id, c.position"
            )
        ]
    from knowledge.embeddings import LocalProvider

    model = LocalProvider().model
    model.encode(texts[:64], batch_size=32)
    t = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    raw = time.perf_counter() - t
    result = {
        "benchmark": "ingest",
        "corpus": "SciFact (../shared/datasets/scifact/corpus.jsonl)",
        "documents": len(lines),
        "files": len(files),
        "chunks": len(texts),
        "failed_files": totals["failed"],
        "upload_seconds": round(upload_seconds, 2),
        "end_to_end_seconds": round(end_to_end, 2),
        "end_to_end_chunks_per_s": round(len(texts) / end_to_end, 1),
        "raw_encode_seconds": round(raw, 2),
        "raw_encode_chunks_per_s": round(len(texts) / raw, 1),
        "end_to_end_vs_raw": round(raw / end_to_end, 3),
        "goal": ">= 0.8",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
