"""A brand-new tenant's statements beside a big analysed one, before and after ``ANALYZE``.

The skewed database of tests/search/test_plans.py (60,000 analysed chunks of a big tenant, 800
chunks of a new tenant written after the statistics were taken, autovacuum held off), in a bench
database of its own. As the app role in the new tenant's scope, interleaved, same run:

- the exact vector statement as the product runs it (hash joins pinned, ``knowledge/plans.py``)
  against the same statement unpinned (the raw baseline: what the planner picks from the stale
  statistics), and a whole uncached ``search_run`` (semantic, hybrid);
- exact-duplicate flagging of the new document: the product's set-based statement against the
  correlated subquery it replaced (run once: it takes tens of seconds);
- the same vector statements after ``ANALYZE`` (the figures the other benchmarks measure).

Prints a JSON summary. ``python bench/new_tenant.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import common  # noqa: F401 (sys.path, settings)

OLD_EXACT_DUPLICATES = """
UPDATE knowledge_chunk c SET duplicate_of_id = d.first_id
FROM (
    SELECT c2.id, (
        SELECT min(o.id) FROM knowledge_chunk o
        JOIN knowledge_document od ON od.id = o.document_id
        WHERE o.chatbot_id = c2.chatbot_id AND o.content_hash = c2.content_hash AND o.id < c2.id
          AND od.status <> 'failed' AND o.document_id IS DISTINCT FROM NULL
    ) AS first_id
    FROM knowledge_chunk c2 WHERE c2.document_id = %(document)s
) d
WHERE c.id = d.id AND d.first_id IS NOT NULL
"""


def _ms(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 2),
        "n": len(ordered),
    }


def _timed(work) -> float:
    from django.db import transaction

    class Rollback(Exception):
        pass

    began = time.perf_counter()
    try:
        with transaction.atomic():
            work()
            raise Rollback
    except Rollback:
        pass
    return (time.perf_counter() - began) * 1000


def _vector_statement(space, chatbot_id, vector, *, pinned: bool):
    from django.db import connection

    from knowledge.plans import plan_pinned
    from search.selectors import NO_FILTERS
    from search.selectors.vectors import semantic_query

    sql, params = semantic_query(space=space, chatbot_id=chatbot_id, vector=vector, limit=10, filters=NO_FILTERS,
                                 exact=True)  # fmt: skip

    def work():
        with connection.cursor() as cursor:
            if pinned:
                plan_pinned(cursor)
            cursor.execute(sql, params)
            cursor.fetchall()

    return work


def _vector_round(skewed, space, rounds: int) -> dict:
    out = {"product (pinned)": [], "raw (unpinned)": []}
    for i in range(rounds):
        vector = skewed.vectors[i % len(skewed.vectors)]
        for name, pinned in (("product (pinned)", True), ("raw (unpinned)", False)):
            out[name].append(_timed(_vector_statement(space, skewed.new.chatbot.pk, vector, pinned=pinned)))
    return {name: _ms(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    options = parser.parse_args()

    import django

    django.setup()
    from common import use_database

    use_database("bench_new_tenant", fresh=True)
    from django.db import connection

    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import flag_exact_duplicates
    from search.arguments import SearchArguments
    from search.services import search_run
    from tenants import dbroles
    from tenants.scoping import tenant_context
    from tests.search import skewed as skew

    began = time.perf_counter()
    skewed = skew.build()
    summary = {"setup_seconds": round(time.perf_counter() - began, 1), "big_chunks": skew.BIG_CHUNKS,
               "new_chunks": skew.NEW_CHUNKS}  # fmt: skip
    bot = skewed.new.chatbot
    with tenant_context(skewed.new.tenant.pk):
        space = chatbot_space_ensure_active(chatbot=bot).space
        _vector_round(skewed, space, 3)  # warm
        summary["new tenant, before ANALYZE: exact vector statement"] = _vector_round(skewed, space, options.rounds)
        for mode in ("semantic", "hybrid"):
            samples = []
            for i in range(options.rounds):
                args = SearchArguments(query=f"reset my password {i}", chatbot_id=bot.pk, mode=mode, max_results=10)
                samples.append(_timed(lambda: search_run(chatbot=bot, args=args, log=False, use_cache=False)))  # noqa: B023
            summary[f"new tenant, before ANALYZE: search_run {mode} (uncached, no HTTP)"] = _ms(samples)
        product = _timed(lambda: flag_exact_duplicates(document_id=skewed.new_document_id, exclude_document_id=None))

        def old():
            with connection.cursor() as cursor:
                cursor.execute(OLD_EXACT_DUPLICATES, {"document": skewed.new_document_id})

        summary["new tenant, before ANALYZE: exact-duplicate flagging of 800 chunks"] = {
            "product_ms": round(product, 1),
            "raw (the correlated subquery it replaced)_ms": round(_timed(old), 1),
        }
    with dbroles.owner_connect() as owner:
        for table in skew.TABLES:
            owner.execute(f"ANALYZE {table}")
    with tenant_context(skewed.new.tenant.pk):
        summary["new tenant, after ANALYZE: exact vector statement"] = _vector_round(skewed, space, options.rounds)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
