"""The search optimizer on ~100k chunks: search p95 and recall@10 before and after an autopilot run.

    python bench/optimize.py [--fresh] [--bots N] [--queries N]

Builds (once; ``--fresh`` rebuilds) the database ``chatbot_training_optimizebench`` the way
bench/search.py builds its own (20 chatbots of 1k to 50k chunks, SciFact sentences with their
real all-MiniLM-L6-v2 vectors plus noise, no model run per chunk), gives the big chatbots their
own HNSW index (as beat does), then for the ``--bots`` largest chatbots:

- before: recall@10 (against exact search) and p50/p95 of the serving path
  (``search.services._semantic_search`` with the chatbot's ``Serving`` tuning: none yet, so the
  settings' defaults), on noisy pool vectors as queries, in the chatbot's tenant scope;
- an optimization run (``tune``; Celery eager: in this process) per chatbot;
- after: the same queries through the same path, now with the tuning it stored.

Also the cost of what runs beside searches (hooks, filled in as they exist): the alert evaluator
(``monitoring.alerts.evaluate.alerts_evaluate``) and a ``/metrics`` scrape. Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, use_database  # noqa: E402

DATABASE = "chatbot_training_optimizebench"


def _bench_search():
    """bench/search.py (its builder), loaded under another name: "search" is the app."""
    spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).resolve().parent / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(values, q)), 2)


def measure(chatbot, queries) -> dict:
    """recall@10 and latency of the serving path with the chatbot's current tuning."""
    from search.selectors import NO_FILTERS, semantic_hits
    from search.services import _semantic_search, serving_for, serving_forget

    serving_forget()
    serving = serving_for(chatbot)
    space = serving.space.store
    for vector in queries[:10]:  # warm the caches: the first searches of a process read pages from disk
        _semantic_search(space=space, chatbot=chatbot, vector=vector, limit=10, filters=NO_FILTERS,
                         ef_search=serving.ef_search, exact_max=serving.exact_max)  # fmt: skip
    recalls, times, strategies = [], [], set()
    for vector in queries:
        began = time.perf_counter()
        found, strategy = _semantic_search(space=space, chatbot=chatbot, vector=vector, limit=10, filters=NO_FILTERS,
                                           ef_search=serving.ef_search, exact_max=serving.exact_max)  # fmt: skip
        times.append((time.perf_counter() - began) * 1000)
        exact = semantic_hits(space=space, chatbot_id=chatbot.pk, vector=vector, limit=10, exact=True)
        truth = {h.chunk_id for h in exact}
        recalls.append(len(truth & {h.chunk_id for h in found}) / max(len(truth), 1))
        strategies.add(strategy)
    return {
        "ef_search": serving.ef_search,
        "exact_max": serving.exact_max,
        "strategy": "/".join(sorted(strategies)),
        "recall@10": round(statistics.fmean(recalls), 4),
        "p50_ms": _percentile(times, 50),
        "p95_ms": _percentile(times, 95),
    }


def side_costs(repeats: int = 20) -> dict:
    """What runs beside searches, timed when it exists: the alert evaluator and /metrics. (Hooks:
    add an entry here when another periodic cost lands.)"""
    from django.conf import settings
    from django.test import Client

    out: dict = {}
    try:
        from monitoring.alerts.evaluate import alerts_evaluate
    except ImportError:
        out["alerts_evaluate"] = "not available"
    else:
        times, totals = [], {}
        try:
            for _ in range(repeats):
                began = time.perf_counter()
                totals = alerts_evaluate()  # it scopes itself, as its beat task
                times.append((time.perf_counter() - began) * 1000)
        except Exception as exc:
            out["alerts_evaluate_ms"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            out["alerts_evaluate_ms"] = {
                "p50": _percentile(times, 50),
                "p95": _percentile(times, 95),
                "rules": totals.get("rules"),
            }
    client, times, status = Client(HTTP_HOST="127.0.0.1"), [], None
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            status = client.get(
                "/metrics", HTTP_AUTHORIZATION=f"Bearer {getattr(settings, 'METRICS_TOKEN', '')}"
            ).status_code
            times.append((time.perf_counter() - began) * 1000)
    except Exception as exc:  # a hook: report, do not lose the figures above
        out["metrics_scrape_ms"] = f"failed: {type(exc).__name__}: {exc}"
    else:
        out["metrics_scrape_ms"] = {"status": status, "p50": _percentile(times, 50), "p95": _percentile(times, 95)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", action="store_true", help="rebuild the benchmark database")
    parser.add_argument("--bots", type=int, default=4, help="how many of the largest chatbots to optimise")
    parser.add_argument("--queries", type=int, default=100, help="measured queries per chatbot, before and after")
    args = parser.parse_args()
    if not (SHARED / "datasets" / "scifact" / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"needs {SHARED} (../shared is not beside this clone)"}))
        return
    import django

    django.setup()
    import numpy as np
    from django.conf import settings

    from chatbot_training.celery import app
    from tenants.scoping import cross_tenant_context, tenant_context

    app.conf.task_always_eager = True  # the run executes here, on commit of its start
    settings.SEARCH_LOG_FLUSHER_THREAD = False
    bench = _bench_search()
    _, created = use_database(DATABASE, fresh=args.fresh)
    from knowledge.services import vector_indexes_optimize
    from search.models import OptimizationRun
    from search.services.optimize import optimization_start
    from tenants.models import Chatbot

    texts = bench.pool_texts()
    vectors = bench.pool_vectors(texts)
    summary: dict = {"database": DATABASE}
    with cross_tenant_context("bench"):
        if created or Chatbot.objects.count() != len(bench.SIZES):
            if not created:
                use_database(DATABASE, fresh=True)
            began = time.perf_counter()
            _, summary["space_index_seconds"] = bench.build(texts, vectors)
            summary["build_seconds"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        built = vector_indexes_optimize()
        summary["chatbot_indexes_built"] = len(built["created"] + built["rebuilt"])
        summary["chatbot_indexes_seconds"] = round(time.perf_counter() - began, 1)
        OptimizationRun.objects.filter(status__in=OptimizationRun.ACTIVE).update(status="failed", error="bench reset")
        sizes = dict(Chatbot.objects.values_list("pk", "tenant_id"))
        from knowledge.vectors import vector_counts

        counts = {bot: count for (_, bot), count in vector_counts().items()}
    largest = sorted(counts, key=lambda bot: -counts[bot])[: args.bots]
    rng = np.random.default_rng(11)
    rows = []
    for bot_id in largest:
        queries = [
            vectors[rng.integers(0, len(vectors))] + rng.normal(0, 0.05, vectors.shape[1]) for _ in range(args.queries)
        ]
        queries = [q / np.linalg.norm(q) for q in queries]
        with tenant_context(sizes[bot_id]):
            chatbot = Chatbot.objects.select_related("tenant").get(pk=bot_id)
            from search.models import SearchTuning

            SearchTuning.objects.filter(chatbot=chatbot).delete()  # "before" is the untuned default, every time
            before = measure(chatbot, queries)
            began = time.perf_counter()
            run = optimization_start(tenant=chatbot.tenant, chatbot=chatbot, actions=["tune"], requested_by="bench")
            run.refresh_from_db()
            seconds = round(time.perf_counter() - began, 1)
            chatbot.refresh_from_db()
            after = measure(chatbot, queries)
        tune = run.results.get("tune", {})
        rows.append(
            {
                "chatbot_id": bot_id,
                "vectors": counts[bot_id],
                "run_status": run.status,
                "run_error": run.error or None,
                "run_seconds": seconds,
                "chosen": tune.get("chosen"),
                "tune_measured": {"before": tune.get("before"), "after": tune.get("after")},
                "before": before,
                "after": after,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary["chatbots"] = rows
    summary["side_costs"] = side_costs()
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
