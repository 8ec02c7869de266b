"""End-to-end ingestion throughput (API -> Celery worker -> PostgreSQL/pgvector) against the raw
``model.encode`` speed on the same chunks (each with its context, as the pipeline embeds it),
measured in the same run.

    python bench/ingest.py [--docs N] [--per-file N]

Uses the SciFact corpus from ../shared; starts its own web server and worker on a fresh
database ``chatbot_training_bench`` of the (embedded or configured) PostgreSQL. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_training.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "bench"))
from common import Stack, call, multipart  # noqa: E402


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

    with Stack("chatbot_training_bench", args.port) as stack:
        result = _run(args, stack)
    print(json.dumps(result, indent=2))


def _run(args, stack) -> dict:
    import psycopg

    api, key, chatbot = stack.api, stack.key, stack.chatbot
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

    with psycopg.connect(stack.owner_url) as conn:  # its own read-back sees every tenant
        rows = conn.execute(
            "SELECT c.text, c.context FROM knowledge_chunk c JOIN knowledge_document d ON d.id = c.document_id "
            "WHERE d.title LIKE 'scifact-%%' ORDER BY d.id, c.position"
        ).fetchall()
    from knowledge.chunking import embedding_text
    from knowledge.embeddings import LocalProvider

    texts = [embedding_text(text, context) for text, context in rows]  # what the pipeline embeds

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
        "goal": ">= 1.0",
    }
    return result


if __name__ == "__main__":
    main()
