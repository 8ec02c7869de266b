"""The product against what a team would pick instead: LangChain PGVector and LlamaIndex
PGVectorStore, same model (all-MiniLM-L6-v2), same rows, same queries, in one run.

    python bench/peers.py [--big-docs N] [--per-intent N] [--queries N] [--port N]

Runs as a new customer meets the product: a fresh database ``chatbot_training_peers`` whose
first tenant uploads SciFact abstracts (``--big-docs``) and is analysed; autovacuum is off on
the knowledge tables, so the statistics never learn about the next tenant. A new tenant then
uploads a BANKING77 FAQ (``--per-intent`` customer questions per intent, 77 intents) through
``POST /api/upload-training-data``; its ingestion is timed from the upload to ``ready``. The
peers embed and insert the same texts (read back from the product's chunks, with the context
the product embeds) in ``bench/peers_child.py`` under ``var/peers-venv/bin/python``, each in a
database of its own (their best case: no other tenant's rows). Then the held-out BANKING77 test
questions: the first half before any ``ANALYZE``, the second half after ``ANALYZE`` of every
table, each question asked of the product over HTTP (``POST /api/search``, semantic, one
keep-alive client, client wall time) and of both peers in-process (their call's wall time),
interleaved, in rotating order, 50 ms apart (PyTorch's threads spin-wait after a call and would
slow whoever comes next). Last, the analysed tenant uploads the same FAQ (an analysed
tenant's ingestion) and the peers ingest it into a second collection. Raw ``model.encode`` of
the same texts (PyTorch, batch 32) is the ingestion baseline of the same run.

Prints JSON. Needs ../shared and var/peers-venv (``make bench`` creates it from
requirements-peers.txt).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, Stack, call, database_create, multipart  # noqa: E402

PEERS_PYTHON = ROOT / "var" / "peers-venv" / "bin" / "python"
DATABASE = "chatbot_training_peers"
KNOWLEDGE_TABLES = ("knowledge_document", "knowledge_chunk", "knowledge_chunkembedding")
PEERS = ("langchain", "llamaindex")


def _ms(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
    }


class Peers:
    """The child process that runs both peers."""

    def __init__(self, langchain_url: str, llamaindex_url: str, weights: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            [str(PEERS_PYTHON), str(ROOT / "bench" / "peers_child.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        ready = self.send({"langchain_url": langchain_url, "llamaindex_url": llamaindex_url, "weights": weights})
        if not ready.get("ready"):
            raise RuntimeError(f"the peers' process did not start: {ready}")

    def send(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the peers' process ended (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


class Product:
    """The product's search API on one keep-alive connection."""

    def __init__(self, port: int, key: str, chatbot_id: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.chatbot_id = chatbot_id

    def query(self, text: str, k: int) -> tuple[float, list[str]]:
        body = json.dumps({"query": text, "chatbot_id": self.chatbot_id, "mode": "semantic", "max_results": k})
        began = time.perf_counter()
        self.connection.request("POST", "/api/search", body, self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        ms = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise RuntimeError(f"search answered {response.status}: {payload[:300]!r}")
        return ms, [hit["metadata"].get("example_id") for hit in json.loads(payload)["results"]]


def _upload(stack, key: str, chatbot_id: int, name: str, body: bytes, kind: str) -> None:
    data, content_type = multipart({"chatbot_id": chatbot_id, "content_type": kind}, name, body)
    call(f"{stack.api}/upload-training-data", key, data, content_type)


def _wait_ready(stack, key: str, chatbot_id: int, documents: int, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        totals = call(f"{stack.api}/training-data/{chatbot_id}", key)["totals"]
        if totals["ready"] + totals["failed"] >= documents:
            return totals
        time.sleep(0.1)
    raise RuntimeError("ingestion did not finish")


def _timed_upload(stack, key: str, chatbot_id: int, name: str, body: bytes, before: int) -> tuple[float, dict]:
    began = time.perf_counter()
    _upload(stack, key, chatbot_id, name, body, "faq")
    totals = _wait_ready(stack, key, chatbot_id, before + 1)
    return time.perf_counter() - began, totals


def _analyze(owner) -> None:
    """ANALYZE the knowledge tables once the worker's index builds are done (the chatbot's own HNSW
    index is built CONCURRENTLY after a big upload: an ANALYZE beside it deadlocks)."""
    import psycopg

    for _ in range(600):
        if not owner.execute("SELECT 1 FROM pg_stat_progress_create_index").fetchone():
            try:
                for table in KNOWLEDGE_TABLES:
                    owner.execute(f"ANALYZE {table}")
                return
            except psycopg.errors.DeadlockDetected:
                pass
        time.sleep(0.5)
    raise RuntimeError("the knowledge tables could not be analysed")


def _embedded_rows(owner, chatbot_id: int) -> tuple[list[str], list[str]]:
    """What the product embedded for the chatbot's FAQ (text with its context) and each row's id."""
    from knowledge.chunking import embedding_text

    rows = owner.execute(
        "SELECT c.text, c.context, c.metadata->>'example_id' FROM knowledge_chunk c "
        "WHERE c.chatbot_id = %s ORDER BY c.document_id, c.position",
        [chatbot_id],
    ).fetchall()
    return [embedding_text(text, context) for text, context, _ in rows], [ident for _, _, ident in rows]


def _queries(peers: Peers, product: Product, queries, qrels, collection: str, k: int = 10) -> dict:
    from quality import ndcg_at

    ms = {name: [] for name in ("product", *PEERS)}
    ndcg = {name: [] for name in ms}
    for number, (qid, text) in enumerate(queries):
        order = ["product", *PEERS]
        order = order[number % 3 :] + order[: number % 3]  # nobody always goes first
        for name in order:
            # an idle gap: PyTorch's OpenMP threads spin for a while after each call, on the cores
            # the next system's call would use
            time.sleep(0.05)
            if name == "product":
                took, ids = product.query(text, k)
            else:
                answer = peers.send({"op": "query", "peer": name, "collection": collection, "text": text, "k": k})
                took, ids = answer["ms"], answer["ids"]
            ms[name].append(took)
            ndcg[name].append(ndcg_at(ids, qrels[qid]))
    out = {name: {**_ms(ms[name]), "ndcg@10": round(sum(ndcg[name]) / len(ndcg[name]), 4)} for name in ms}
    out["queries"] = len(queries)
    best_p50 = min(out[p]["p50_ms"] for p in PEERS)
    best_p95 = min(out[p]["p95_ms"] for p in PEERS)
    out["product_p50_vs_best_peer"] = round(out["product"]["p50_ms"] / best_p50, 3)
    out["product_p95_vs_best_peer"] = round(out["product"]["p95_ms"] / best_p95, 3)
    return out


def _ingest_peers(peers: Peers, collection: str, texts: list[str], ids: list[str]) -> dict:
    return {
        name: round(peers.send({"op": "ingest", "peer": name, "collection": collection, "texts": texts, "ids": ids})[
            "seconds"], 2)
        for name in PEERS
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-docs", type=int, default=1500, help="SciFact abstracts of the analysed tenant")
    parser.add_argument("--per-intent", type=int, default=10, help="BANKING77 FAQ rows per intent (77 intents)")
    parser.add_argument("--queries", type=int, default=400, help="held-out test questions (half before ANALYZE)")
    parser.add_argument("--port", type=int, default=8772)
    args = parser.parse_args()
    corpus = SHARED / "datasets" / "scifact" / "corpus.jsonl"
    if not corpus.exists() or not (SHARED / "datasets" / "faq" / "banking77" / "train.csv").exists():
        print(json.dumps({"benchmark": "peers", "skipped": f"needs {SHARED}/datasets (../shared beside this clone)"}))
        return
    if not PEERS_PYTHON.exists():
        print(json.dumps({"benchmark": "peers", "skipped": f"needs {PEERS_PYTHON}: `make bench` creates it"}))
        return
    import django

    django.setup()
    print(json.dumps(_run(args, corpus), indent=2))


def _run(args, corpus: Path) -> dict:
    import psycopg
    from quality import banking77

    from knowledge.embeddings import LocalProvider
    from knowledge.tokens import local_model_path

    faq = banking77(per_intent=args.per_intent)
    faq.queries = faq.queries[: args.queries]
    (faq_name, faq_body, _), = faq.files  # fmt: skip
    half = len(faq.queries) // 2
    peer_urls = {name: database_create(f"{DATABASE}_{name}", fresh=True)[0]["DATABASE_OWNER_URL"] for name in PEERS}
    report: dict = {"benchmark": "peers", "model": "all-MiniLM-L6-v2"}
    with Stack(DATABASE, args.port) as stack, psycopg.connect(stack.owner_url, autocommit=True) as owner:
        peers = Peers(peer_urls["langchain"], peer_urls["llamaindex"], str(local_model_path()))
        for table in KNOWLEDGE_TABLES:  # the statistics only learn what this bench ANALYZEs
            owner.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")

        # The analysed tenant: SciFact abstracts, then ANALYZE.
        lines = corpus.read_text(encoding="utf-8").splitlines()[: args.big_docs]
        files = [lines[i : i + 250] for i in range(0, len(lines), 250)]
        began = time.perf_counter()
        for number, part in enumerate(files):
            _upload(stack, stack.key, stack.chatbot, f"scifact-{number}.jsonl", "\n".join(part).encode(), "document")
        _wait_ready(stack, stack.key, stack.chatbot, len(files))
        big_chunks = owner.execute("SELECT count(*) FROM knowledge_chunk").fetchone()[0]
        report["analysed_tenant"] = {"documents": len(lines), "chunks": big_chunks,
                                     "ingest_seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
        _analyze(owner)
        warm = Product(args.port, stack.key, stack.chatbot)
        for text in ("warm up the web workers", "and their query encoder", "before anything is timed", "ok"):
            warm.query(text, 10)

        # The new tenant's first upload, before any ANALYZE.
        new = stack.create_tenant("New customer")
        seconds, totals = _timed_upload(stack, new["api_key"], new["chatbot_id"], faq_name, faq_body, 0)
        texts, ids = _embedded_rows(owner, new["chatbot_id"])
        peer_seconds = _ingest_peers(peers, "new_tenant", texts, ids)
        model = LocalProvider().model
        model.encode(texts[:64], batch_size=32)
        raw_began = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        raw = time.perf_counter() - raw_began
        report["ingestion"] = {
            "rows": len(texts),
            "failed_files": totals["failed"],
            "new_tenant": {
                "product_seconds": round(seconds, 2),
                **{f"{name}_seconds": value for name, value in peer_seconds.items()},
                "product_vs_langchain": round(peer_seconds["langchain"] / seconds, 3),
                "product_chunks_per_s": round(len(texts) / seconds, 1),
            },
            "raw_encode_seconds": round(raw, 2),
            "raw_encode_chunks_per_s": round(len(texts) / raw, 1),
            "product_end_to_end_vs_raw_encode": round(raw / seconds, 3),
        }

        product = Product(args.port, new["api_key"], new["chatbot_id"])
        report["search"] = {"new tenant, before ANALYZE": _queries(peers, product, faq.queries[:half], faq.qrels,
                                                                    "new_tenant")}  # fmt: skip
        _analyze(owner)
        peers.send({"op": "analyze"})
        report["search"]["after ANALYZE"] = _queries(peers, product, faq.queries[half:], faq.qrels, "new_tenant")

        # An analysed tenant's upload of the same FAQ.
        seconds, _ = _timed_upload(stack, stack.key, stack.chatbot, faq_name, faq_body, len(files))
        peer_seconds = _ingest_peers(peers, "analysed_tenant", texts, ids)
        report["ingestion"]["analysed_tenant"] = {
            "product_seconds": round(seconds, 2),
            **{f"{name}_seconds": value for name, value in peer_seconds.items()},
            "product_vs_langchain": round(peer_seconds["langchain"] / seconds, 3),
        }
        peers.close()
    report["setup"] = (
        "product: HTTP POST /api/search (semantic, 10 results), one keep-alive client, client wall time, "
        "web server and worker as `make run` starts them; peers: in-process call wall time (query "
        "embedding included), each alone in its own database; same model, rows and questions"
    )
    report["goals"] = {
        "search": "new tenant over HTTP <= both peers at p50 and p95, equal nDCG@10 (stretch: p50 <= 0.5x)",
        "ingestion": "product seconds <= LangChain's (product_vs_langchain >= 1.0); end-to-end vs raw >= 1.0",
    }
    return report


if __name__ == "__main__":
    main()
