"""A/B tests must not slow search: latency with a test running vs without, in the same run.

    python bench/ab.py [--queries 300] [--rounds 4]

Builds (once) the database ``chatbot_training_abbench``: two chatbots of one tenant holding the
same 1,000 SciFact abstracts (ingested through document_create and the ingestion task, Celery
eager), and a query-adapter version of the first (a small random low-rank transform over the
stored vectors, saved and served as a trained adapter is). The first chatbot runs an A/B test of
that version at 50 %; its twin runs none. Every SciFact test query, with its own ``user_id``, is
sent to both chatbots one after the other (the order alternating), through the search fast path
(``search.fastpath.search_answer``, what ``POST /api/search`` with an API key runs): once new
(uncached: query embedding, the variant's adapter for its half, the vector SQL) and once again
(cached). Interleaving per query gives both conditions the same machine at the same moment, so a
drift of the CPU between rounds does not read as a cost of the test. Each run, round and chatbot
carries a marker of its own, so nothing reads an earlier run's, round's or twin's cache. Prints a JSON summary:
p50/p95 per condition and path, per arm while the test runs, and the ratio with/without (goal: at
most 1.1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, use_database  # noqa: E402

DATABASE = "chatbot_training_abbench"
DATA = SHARED / "datasets" / "scifact"
ABSTRACTS = 1000


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50_ms": round(ordered[len(ordered) // 2], 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)], 3),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
        "searches": len(ordered),
    }


def ensure_bot(name: str = "ab-bench"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from knowledge.models import Document
    from knowledge.services import document_create
    from tenants.models import Chatbot
    from tenants.scoping import tenant_context
    from tenants.services import chatbot_create, tenant_bootstrap

    chatbot = Chatbot.objects.filter(name=name).select_related("tenant").first()
    if chatbot is None:
        first = Chatbot.objects.filter(name="ab-bench").select_related("tenant").first()
        if first is None:
            chatbot = tenant_bootstrap(name="AB bench", chatbot_name=name).chatbot
        else:
            with tenant_context(first.tenant_id):
                chatbot = chatbot_create(tenant=first.tenant, name=name)
    lines = (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:ABSTRACTS]
    with tenant_context(chatbot.tenant_id):
        if not Document.objects.filter(chatbot=chatbot, status="ready").exists():
            Document.objects.filter(chatbot=chatbot).delete()
            for start in range(0, len(lines), 250):
                document_create(tenant=chatbot.tenant, chatbot=chatbot, content_type="document",
                                upload=SimpleUploadedFile(f"scifact-{start}.jsonl",
                                                          "\n".join(lines[start:start + 250]).encode()))  # fmt: skip
        chatbot.refresh_from_db()
    return chatbot


def ensure_variant(chatbot):
    """A query-adapter version over the base model's vectors (random, small: it moves queries)."""
    import numpy as np

    from knowledge.adapters import QueryAdapter
    from knowledge.models import ChatbotSpace
    from training.models import ModelVersion, TrainingJob
    from training.services.versions import model_version_create

    found = ModelVersion.objects.filter(chatbot=chatbot).first()
    if found is not None:
        return found
    base = ChatbotSpace.objects.select_related("space").get(chatbot=chatbot, role="active").space
    rng = np.random.default_rng(1)
    adapter = QueryAdapter(rng.standard_normal((base.dimensions, 32)).astype(np.float32) * 0.05,
                           rng.standard_normal((32, base.dimensions)).astype(np.float32) * 0.05)  # fmt: skip
    job = TrainingJob.objects.create(tenant=chatbot.tenant, chatbot=chatbot, job_type="adapter", status="succeeded")
    with tempfile.TemporaryDirectory() as workdir:
        return model_version_create(
            job=job,
            metrics={"bootstrap": {"gain": 0.0, "low": 0.0, "high": 0.0}, "per_source": {}},
            save=lambda folder: adapter.save(folder, vectors_of=base.key),
            workdir=Path(workdir),
            vectors_from=base,
        )


def run_round(meta: dict, pair: dict, queries: list[str], marker: str) -> tuple[dict, dict]:
    """Every query to both chatbots (``pair``: condition -> chatbot), the order alternating:
    uncached then cached. Returns the latencies per condition and path, and per arm."""
    from search import fastpath

    samples = {condition: {"uncached": [], "cached": []} for condition in pair}
    arms: dict = {}
    for n, query in enumerate(queries):
        order = list(pair.items()) if n % 2 else list(reversed(pair.items()))
        for condition, chatbot in order:  # a marker per chatbot too: the twins share the base model's embedding cache
            text = f"{query} {marker}{condition == 'with':d}"
            body = json.dumps({"chatbot_id": chatbot.pk, "query": text, "user_id": f"u{n}"}).encode()
            for path in ("uncached", "cached"):
                began = time.perf_counter()
                status, answer, _ = fastpath.search_answer(meta, body)
                samples[condition][path].append((time.perf_counter() - began) * 1000)
                assert status == 200, answer
            if condition == "with":
                arm = json.loads(answer)["variant"]
                arms.setdefault(arm, []).append(samples[condition]["uncached"][-1])
    return samples, arms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if not (DATA / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"needs {DATA} (../shared is not beside this clone)"}))
        return
    import django

    django.setup()
    from django.conf import settings

    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 10_000_000}  # one key sends it all
    from chatbot_training.celery import app
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("bench"):
        use_database(DATABASE, fresh=False)
        app.conf.task_always_eager = True
        began = time.perf_counter()
        pair = {"with": ensure_bot("ab-bench"), "without": ensure_bot("ab-bench-twin")}
        setup_seconds = round(time.perf_counter() - began, 1)
    with tenant_context(pair["with"].tenant_id):
        print(json.dumps(_run(args, pair, setup_seconds), indent=2))


def _run(args, pair: dict, setup_seconds: float) -> dict:
    from knowledge.models import Chunk
    from search.arguments import SearchArguments
    from search.logbuffer import search_logs_flush
    from search.services import search_run
    from tenants.services import api_key_create
    from training.models import ABTest
    from training.services import ab_test_start, ab_test_stop

    chatbot = pair["with"]
    version = ensure_variant(chatbot)
    if not ABTest.objects.filter(chatbot=chatbot, status__in=ABTest.LIVE).exists():
        test = ab_test_start(tenant=chatbot.tenant, chatbot=chatbot, variant_version_id=version.pk,
                             traffic_percent=50, force=True, requested_by="bench")  # fmt: skip
        test.refresh_from_db()  # the embedding task ran at commit (Celery eager)
        assert test.status == "running", (test.status, test.reason)
    for bot in pair.values():
        bot.refresh_from_db()
    key = api_key_create(tenant=chatbot.tenant, name="bench ab", scopes=["search", "read"])
    meta = {"HTTP_AUTHORIZATION": f"Bearer {key.raw_key}", "CONTENT_TYPE": "application/json"}
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").read_text().splitlines()][: args.queries]
    for bot in pair.values():
        search_run(chatbot=bot, args=SearchArguments(query="warm up", chatbot_id=bot.pk), log=False, use_cache=False)
    run = uuid.uuid4().hex[:8]
    run_round(meta, pair, queries[:20], f"warm{run}")  # the variant's adapter loaded, caches warm
    samples = {condition: {"uncached": [], "cached": []} for condition in pair}
    arms_seen: dict = {}  # arm -> uncached latencies of the chatbot under test
    for round_number in range(args.rounds):
        got, arms = run_round(meta, pair, queries, f"{run}r{round_number}")
        for condition, paths in got.items():
            for path, values in paths.items():
                samples[condition][path] += values
        for arm, values in arms.items():
            arms_seen.setdefault(arm, []).extend(values)
        search_logs_flush()
    ab_test_stop(tenant=chatbot.tenant, chatbot=chatbot, requested_by="bench")
    summary = {
        "chatbot_chunks": {condition: Chunk.objects.filter(chatbot=bot).count() for condition, bot in pair.items()},
        "setup_seconds": setup_seconds,
        "rounds": args.rounds,
        "queries_per_round": len(queries),
        "arms_with_test_uncached": {arm: percentiles(values) for arm, values in sorted(arms_seen.items())},
    }
    for path in ("uncached", "cached"):
        without, with_test = percentiles(samples["without"][path]), percentiles(samples["with"][path])
        summary[path] = {
            "without_test": without,
            "with_test": with_test,
            "p50_ratio": round(with_test["p50_ms"] / without["p50_ms"], 3),
            "p95_ratio": round(with_test["p95_ms"] / without["p95_ms"], 3),
        }
    worst = max(summary[p][r] for p in ("uncached", "cached") for r in ("p50_ratio", "p95_ratio"))
    summary["goal"] = {"max_ratio": 1.1, "worst_ratio": worst, "met": worst <= 1.1}
    return summary


if __name__ == "__main__":
    main()
