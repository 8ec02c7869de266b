"""Search latency, throughput and filtered recall on ~100k chunks across 20 chatbots.

    python bench/search.py [--fresh] [--queries N]

Builds (once; ``--fresh`` rebuilds) the database ``chatbot_training_searchbench``: 5 tenants,
20 chatbots of 1k to 50k chunks in one embedding space. Chunk texts are SciFact sentences;
their vectors are the sentences' real all-MiniLM-L6-v2 embeddings plus a little noise (so the
100k vectors are distinct without encoding 100k texts on a CPU). Then measures:

- recall@10 of the service's vector search against exact search, per chatbot, plain and with a
  metadata filter (the planner picks exact search for small candidate sets, HNSW otherwise);
- the raw ceiling, in-process: query embedding + the vector SQL alone, one client and one per core;
- over HTTP (granian, one worker per core): one client and 8 concurrent clients, uncached
  (every query new) and cached (repeated queries): p50/p95 latency and searches/s;
- a new tenant's first searches over HTTP, before any ANALYZE has seen its rows, and the same
  chatbots' after ANALYZE (one client, uncached): one of 800 chunks (searched exactly) and one
  of 3,000 (HNSW, on the space-wide index: its own is not built yet), written as the app role
  after the statistics were taken and removed at the end.
Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, use_database  # noqa: E402

DATABASE = "chatbot_training_searchbench"
SIZES = [50000, 10000, 6000, 4000, 3000, 3000, 2500, 2000, 2000, 2000,
         1500, 1500, 1500, 1500, 1000, 1000, 1000, 1000, 1000, 1000]  # fmt: skip
POOL = 3000
NOISE = 0.035
CORES = os.cpu_count() or 2


def pool_texts() -> list[str]:
    sentences = []
    for line in (SHARED / "datasets" / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        sentences += [s for s in re.split(r"(?<=[.!?])\s+", doc["text"]) if 40 <= len(s) <= 300]
        if len(sentences) >= POOL:
            break
    return sentences[:POOL]


def pool_vectors(texts: list[str]):
    """Real embeddings of the pool texts, cached under var/ (encoding takes a minute on a CPU)."""
    import numpy as np
    from django.conf import settings

    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
    path = Path(settings.VAR_DIR) / "bench-cache" / f"pool-{digest}.npy"
    if path.exists():
        return np.load(path)
    from knowledge.embeddings import provider_for

    vectors = np.asarray(provider_for("local:all-MiniLM-L6-v2").embed(texts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def build(texts, vectors) -> list[dict]:
    """Tenants, chatbots, one ready document per chatbot, chunks and vectors (COPY), HNSW index."""
    import numpy as np
    from django.db import connection

    from knowledge.models import Document
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import ensure_space_index
    from tenants import dbroles
    from tenants.services import chatbot_create, tenant_bootstrap

    rng = np.random.default_rng(42)
    bots = []
    bundles = [tenant_bootstrap(name=f"Bench tenant {t}", chatbot_name=f"bot-{t}-0") for t in range(5)]
    space = None
    for number, size in enumerate(SIZES):
        bundle = bundles[number % 5]
        chatbot = bundle.chatbot if number < 5 else chatbot_create(tenant=bundle.tenant, name=f"bot-{number}")
        space = chatbot_space_ensure_active(chatbot=chatbot).space
        document = Document.objects.create(
            tenant=bundle.tenant,
            chatbot=chatbot,
            title=f"synthetic-{size}",
            status="ready",
            content_hash=f"bench-{number}",
            original_filename="bench.txt",
            chunk_count=size,
        )
        picks = rng.integers(0, len(texts), size)
        noisy = vectors[picks] + rng.normal(0, NOISE, (size, vectors.shape[1])).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        with dbroles.owner_connect() as owner, owner.cursor() as raw:  # bulk load as the owner
            with raw.copy(
                "COPY knowledge_chunk (tenant_id, chatbot_id, document_id, position, text, token_count, kind, "
                "metadata, heading_path, content_hash, created_at) FROM STDIN"
            ) as copy:
                for position, pick in enumerate(picks):
                    text = texts[pick]
                    metadata = json.dumps({"topic": int(pick % 8), "year": 2016 + position % 10})
                    copy.write_row(
                        (bundle.tenant.pk, chatbot.pk, document.pk, position, text, len(text.split()), "text",
                         metadata, "[]", f"{number}-{position}", "now")
                    )  # fmt: skip
            raw.execute("SELECT id FROM knowledge_chunk WHERE document_id = %s ORDER BY position", [document.pk])
            ids = [row[0] for row in raw.fetchall()]
            with raw.copy(
                "COPY knowledge_chunkembedding (tenant_id, chatbot_id, chunk_id, space_id, embedding, created_at) "
                "FROM STDIN"
            ) as copy:
                for chunk_id, vector in zip(ids, noisy):
                    literal = "[" + ",".join(f"{x:.6f}" for x in vector) + "]"
                    copy.write_row((bundle.tenant.pk, chatbot.pk, chunk_id, space.pk, literal, "now"))
        bots.append({"chatbot_id": chatbot.pk, "tenant_id": bundle.tenant.pk, "size": size, "api_key": bundle.api_key})
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("SET max_parallel_maintenance_workers = %s", [max(CORES - 1, 0)])
        began = time.perf_counter()
        ensure_space_index(space)
        index_seconds = time.perf_counter() - began
    with dbroles.owner_connect() as owner:
        owner.execute("VACUUM ANALYZE knowledge_chunkembedding")
        owner.execute("VACUUM ANALYZE knowledge_chunk")
    return bots, round(index_seconds, 1)


def recall(bots, vectors, per_bot: int) -> list[dict]:
    import numpy as np

    from knowledge.services import chatbot_space_ensure_active
    from search.filters import search_filters_build
    from search.selectors import semantic_hits
    from search.services import _semantic_search
    from tenants.models import Chatbot
    from tenants.scoping import tenant_context

    rng = np.random.default_rng(7)
    rows = []
    topic = search_filters_build(metadata={"topic": {"in": [0, 1]}})
    for bot in bots:
        chatbot = Chatbot.objects.get(pk=bot["chatbot_id"])
        space = chatbot_space_ensure_active(chatbot=chatbot).space
        out = {"chatbot_id": chatbot.pk, "chunks": bot["size"]}
        for label, filters in (("plain", search_filters_build()), ("filtered", topic)):
            scores, strategies, times = [], set(), []
            for _ in range(per_bot):
                query = vectors[rng.integers(0, len(vectors))] + rng.normal(0, 0.05, vectors.shape[1])
                query = query / np.linalg.norm(query)
                with tenant_context(chatbot.tenant_id):  # row-level security on, as in a request
                    began = time.perf_counter()
                    found, strategy = _semantic_search(space=space, chatbot=chatbot, vector=query, limit=10,
                                                       filters=filters)  # fmt: skip
                    times.append((time.perf_counter() - began) * 1000)
                    exact = semantic_hits(space=space, chatbot_id=chatbot.pk, vector=query, limit=10,
                                          filters=filters, exact=True)  # fmt: skip
                truth = {h.chunk_id for h in exact}
                assert truth, f"exact search found nothing for chatbot {chatbot.pk}"  # never a vacuous recall
                scores.append(len(truth & {h.chunk_id for h in found}) / max(len(truth), 1))
                strategies.add(strategy)
            out[f"recall@10_{label}"] = round(sum(scores) / len(scores), 4)
            out[f"strategy_{label}"] = "/".join(sorted(strategies))
            out[f"sql_ms_p50_{label}"] = round(statistics.median(times), 2)
        rows.append(out)
    return rows


def query_texts(count: int, skip: int = 0) -> list[str]:
    with open(SHARED / "datasets" / "faq" / "banking77" / "test.csv", encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with open(SHARED / "datasets" / "scifact" / "queries.jsonl", encoding="utf-8") as handle:
        texts += [json.loads(line)["text"] for line in handle]
    unique = list(dict.fromkeys(texts))
    return unique[skip : skip + count]


def _raw_worker(args):
    """Query embedding + vector SQL, in-process: what one search costs without HTTP, Django
    request handling, caching or logging."""
    texts, bots, threads = args
    import django

    django.setup()
    import torch

    torch.set_num_threads(threads)
    use_database(DATABASE, fresh=False, migrate=False)  # the parent migrated it
    from knowledge.embeddings import provider_for
    from knowledge.services import chatbot_space_ensure_active
    from search.selectors import NO_FILTERS
    from search.services import _semantic_search
    from tenants.models import Chatbot
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("bench"):  # the setup reads every tenant's chatbots
        chatbots = [Chatbot.objects.get(pk=b["chatbot_id"]) for b in bots]
        space = chatbot_space_ensure_active(chatbot=chatbots[0]).space
    provider = provider_for(space.model_key)
    provider.embed(["warm up"])
    for chatbot in chatbots:  # the planner's candidate counts, as a warm server has them
        with tenant_context(chatbot.tenant_id):
            _semantic_search(space=space, chatbot=chatbot, vector=provider.embed(["x"])[0], limit=5, filters=NO_FILTERS)
    latencies = []
    began = time.perf_counter()
    for i, text in enumerate(texts):
        t = time.perf_counter()
        chatbot = chatbots[i % len(chatbots)]
        vector = provider.embed([text])[0]
        with tenant_context(chatbot.tenant_id):  # as a request: row-level security for its tenant
            _semantic_search(space=space, chatbot=chatbot, vector=vector, limit=5, filters=NO_FILTERS)
        latencies.append((time.perf_counter() - t) * 1000)
    return latencies, time.perf_counter() - began


def raw_ceiling(bots, texts, processes: int) -> dict:
    shares = [texts[i::processes] for i in range(processes)]
    threads = max(1, CORES // processes)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        began = time.perf_counter()
        results = pool.map(_raw_worker, [(share, bots, threads) for share in shares])
    latencies = [lat for lats, _ in results for lat in lats]
    elapsed = max(seconds for _, seconds in results)
    del began
    return summary(latencies, len(texts), elapsed)


NEW_TENANT_SIZES = (800, 3000)


def new_tenants(texts, vectors) -> list[dict]:
    """Tenants that arrive after the statistics were taken: each a chatbot whose chunks (pool
    texts, noisy pool vectors) are written in the tenant's scope as the app role; no ANALYZE."""
    import numpy as np

    from tenants.services import tenant_bootstrap
    from tests.conftest import insert_vectors

    rng = np.random.default_rng(11)
    out = []
    for size in NEW_TENANT_SIZES:
        stamp = time.time_ns()
        bundle = tenant_bootstrap(name=f"Bench new tenant {stamp}", chatbot_name=f"new-{size}",
                                  username=f"bench-new-{stamp}", password=f"pw-{stamp}")  # fmt: skip
        picks = rng.integers(0, len(texts), size)
        noisy = vectors[picks] + rng.normal(0, NOISE, (size, vectors.shape[1])).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        insert_vectors(bundle.chatbot, noisy, texts=[texts[p] for p in picks], title=f"new-{size}")
        out.append({"chatbot_id": bundle.chatbot.pk, "tenant_id": bundle.tenant.pk, "size": size,
                    "api_key": bundle.api_key, "username": bundle.username})  # fmt: skip
    return out


def new_tenant_run(port: int, fresh: list[dict], texts: list[str]) -> dict:
    """Each new chatbot's first uncached searches (one client), then ANALYZE of the tables its
    rows are in, then the same chatbot again with other queries."""
    from tenants import dbroles

    half = len(texts) // 2
    out = {}
    for stage, queries in (("before ANALYZE", texts[:half]), ("after ANALYZE", texts[half:])):
        if stage == "after ANALYZE":
            with dbroles.owner_connect() as owner:
                for table in ("knowledge_chunk", "knowledge_chunkembedding", "knowledge_document"):
                    owner.execute(f"ANALYZE {table}")
        for bot in fresh:
            out.setdefault(f"{bot['size']} chunks", {})[stage] = http_run(port, [bot], queries, 1)
    return out


def summary(latencies: list[float], count: int, seconds: float) -> dict:
    ordered = sorted(latencies)
    return {
        "searches": count,
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
        "searches_per_s": round(count / seconds, 1),
    }


def _request_bytes(port: int, key: str, body: str | None) -> bytes:
    if body is None:  # the floor: the cheapest request this server answers
        return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    payload = body.encode()
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _fill(sock, buffer: bytes, length: int) -> bytes:
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    return buffer


def _http_client(args):
    """One keep-alive connection sending pre-encoded requests and reading each response by its
    Content-Length: the load generator shares the server's 2 cores, so it does as little as it can."""
    import socket

    port, requests = args
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    latencies, errors, cached = [], 0, 0
    began = time.perf_counter()
    for request in requests:
        t = time.perf_counter()
        sock.sendall(request)
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length is not None:
            buffer = _fill(sock, buffer, int(length.group(1)))
            payload, buffer = buffer[: int(length.group(1))], buffer[int(length.group(1)) :]
        else:  # chunked
            payload = b""
            while True:
                while b"\r\n" not in buffer:
                    buffer += sock.recv(65536)
                size_line, _, buffer = buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                buffer = _fill(sock, buffer, size + 2)
                payload, buffer = payload + buffer[:size], buffer[size + 2 :]
                if size == 0:
                    break
        latencies.append((time.perf_counter() - t) * 1000)
        if not head.startswith(b"HTTP/1.1 200"):
            errors += 1
        elif b'"cached":true' in payload:
            cached += 1
    sock.close()
    return latencies, time.perf_counter() - began, errors, cached


def http_run(port: int, bots, texts: list[str], clients: int) -> dict:
    """``clients`` processes, each on one keep-alive connection, splitting the queries; every
    query goes to the next chatbot in turn with its tenant's key. A ``None`` text is GET /healthz."""
    requests = [
        _request_bytes(port, bots[i % len(bots)]["api_key"],
                       None if text is None else
                       json.dumps({"query": text, "chatbot_id": bots[i % len(bots)]["chatbot_id"], "max_results": 5}))
        for i, text in enumerate(texts)
    ]  # fmt: skip
    jobs = [(port, requests[c::clients]) for c in range(clients)]
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.map(_http_client, jobs)
    latencies = [lat for lats, _, _, _ in results for lat in lats]
    elapsed = max(seconds for _, seconds, _, _ in results)
    out = summary(latencies, len(latencies), elapsed)
    out["errors"] = sum(r[2] for r in results)
    out["cached_responses"] = sum(r[3] for r in results)
    return out


def main() -> None:
    import django

    django.setup()
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("bench"):  # the benchmark builds and reads every tenant's data
        _main()


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", action="store_true", help="rebuild the benchmark database")
    parser.add_argument("--queries", type=int, default=400, help="uncached queries per HTTP run")
    parser.add_argument("--recall-queries", type=int, default=20, help="recall queries per chatbot and filter")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--workers", type=int, default=CORES, help="granian worker processes")
    parser.add_argument("--threads", type=int, default=4, help="blocking (request) threads per worker")
    args = parser.parse_args()
    if not (SHARED / "datasets" / "scifact" / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"needs {SHARED} (../shared is not beside this clone)"}))
        return
    import django

    django.setup()
    from django.conf import settings

    urls, created = use_database(DATABASE, fresh=args.fresh)
    from tenants.models import Chatbot
    from tenants.services import api_key_create

    texts = pool_texts()
    vectors = pool_vectors(texts)
    state_file = Path(settings.VAR_DIR) / "bench-cache" / "searchbench.json"
    index_seconds = None
    if created or not state_file.exists() or Chatbot.objects.count() != len(SIZES):
        if not created:
            urls, _ = use_database(DATABASE, fresh=True)
        began = time.perf_counter()
        bots, index_seconds = build(texts, vectors)
        build_seconds = round(time.perf_counter() - began, 1)
        public = [{k: v for k, v in bot.items() if k != "api_key"} for bot in bots]
        state_file.write_text(json.dumps({"bots": public, "build_seconds": build_seconds, "index": index_seconds}))
    state = json.loads(state_file.read_text())
    # What beat's knowledge.vector_indexes_optimize does on a live system: chatbots above
    # VECTOR_CHATBOT_INDEX_MIN get their own partial HNSW index (CONCURRENTLY).
    from knowledge.services import vector_indexes_optimize

    began = time.perf_counter()
    built = vector_indexes_optimize()
    if built["created"] or built["rebuilt"]:
        state["chatbot_indexes"] = {"built": built["created"] + built["rebuilt"],
                                    "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
        state_file.write_text(json.dumps(state))
    bots = state["bots"]
    # fresh keys each run (only hashes are stored), one per tenant
    for tenant_id in {b["tenant_id"] for b in bots}:
        tenant = Chatbot.objects.filter(tenant_id=tenant_id).select_related("tenant").first().tenant
        raw_key = api_key_create(tenant=tenant, name="bench").raw_key
        for bot in bots:
            if bot["tenant_id"] == tenant_id:
                bot["api_key"] = raw_key

    report = {
        "benchmark": "search",
        "chatbots": len(bots),
        "chunks": sum(b["size"] for b in bots),
        "cores": CORES,
        "build_seconds": state["build_seconds"],
        "hnsw_index_build_seconds": state["index"],
        "chatbot_hnsw_indexes": state.get("chatbot_indexes"),
        "server": f"what make run serves: granian WSGI, {args.workers} workers x {args.threads} threads, "
        "1 embedding thread each, the search fast path, persistent connections, debug off",
        "settings": {
            "SEARCH_EXACT_MAX": settings.SEARCH_EXACT_MAX,
            "SEARCH_HNSW_EF_SEARCH": settings.SEARCH_HNSW_EF_SEARCH,
            "VECTOR_CHATBOT_INDEX_MIN": settings.VECTOR_CHATBOT_INDEX_MIN,
        },
    }
    report["recall"] = recall(bots, vectors, args.recall_queries)
    report["recall_min"] = {
        label: min(r[f"recall@10_{label}"] for r in report["recall"]) for label in ("plain", "filtered")
    }

    uncached = query_texts(args.queries * 4 + 40)
    report["raw_ceiling"] = {
        "one_client": raw_ceiling(bots, uncached[: args.queries // 2], 1),
        f"{CORES}_processes": raw_ceiling(bots, uncached[: args.queries], CORES),
    }

    fresh = new_tenants(texts, vectors)  # before the server starts: no ANALYZE knows them

    from chatbot_training.processes import web_command, web_env

    env = {
        **os.environ,
        **urls,
        "REDIS_URL": settings.REDIS_URL,
        "SEARCH_CACHE_PREFIX": f"search:{DATABASE}:{time.time_ns()}:",  # start cold
        "CHATBOT_KEEP_EMBEDDED": "1",  # the local stack, as `make run`: debug off, plain HTTP on the loopback
        "API_RATE_LIMITS": '{"standard": 100000000}',  # measure the server, not the per-key limit
        "LOG_LEVEL": "WARNING",
    }
    # exactly what `make run` starts (chatbot_training/processes.py)
    server = subprocess.Popen(
        web_command(port=args.port, workers=args.workers, threads=args.threads), cwd=ROOT, env=web_env(env)
    )
    try:
        for _ in range(240):
            try:
                http.client.HTTPConnection("127.0.0.1", args.port, timeout=2).request("GET", "/healthz")
                break
            except OSError:
                time.sleep(0.5)
        http_run(args.port, bots, query_texts(40, skip=len(uncached)), CORES * 2)  # warm every worker
        offset = args.queries // 2
        report["http_uncached"] = {
            "one_client": http_run(args.port, bots, uncached[offset : offset + args.queries // 2], 1),
            "8_clients": http_run(args.port, bots, uncached[args.queries * 2 : args.queries * 3], 8),
        }
        repeated = uncached[:20]
        http_run(args.port, bots, repeated, 1)  # fill the cache
        report["http_cached"] = {
            "one_client": http_run(args.port, bots, repeated * 25, 1),
            "8_clients": http_run(args.port, bots, repeated * 500, 8),
        }
        # What this server and client pair can do at all: GET /healthz (no database, no Redis).
        report["http_floor_healthz_8_clients"] = http_run(args.port, bots, [None] * 4000, 8)
        # Beside http_uncached.one_client (chatbots the statistics know): a new tenant's first searches.
        report["http_new_tenant_one_client"] = new_tenant_run(
            args.port, fresh, query_texts(2 * (args.queries // 4), skip=len(uncached) + 40)
        )
    finally:
        server.terminate()
        server.wait(30)
        from tests.search.skewed import tenants_remove

        tenants_remove([bot["tenant_id"] for bot in fresh], [bot["username"] for bot in fresh])
    ceiling = report["raw_ceiling"][f"{CORES}_processes"]["searches_per_s"]
    report["uncached_throughput_vs_raw_ceiling"] = round(
        report["http_uncached"]["8_clients"]["searches_per_s"] / ceiling, 3
    )
    report["goals"] = {
        "single_client_uncached_p95_ms": "< 30",
        "uncached_throughput_vs_raw_ceiling": ">= 0.7",
        "cached_searches_per_s": ">= 1000",
        "recall@10 every chatbot": ">= 0.95",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
