"""A brand-new tenant's statements beside a big analysed one, before and after ``ANALYZE``.

The skewed database of tests/search/test_plans.py (60,000 analysed chunks of a big tenant, 800
chunks of a new tenant written after the statistics were taken, autovacuum held off), in a bench
database of its own. As the app role in the new tenant's scope, interleaved, same run:

- the exact vector statement as the product runs it (hash joins pinned, ``knowledge/plans.py``;
  hits' chunks and documents looked up by key) against the same statement unpinned (the raw
  baseline: what the planner picks from the stale statistics) and against its previous form
  (pinned, hits joined to their chunks and documents by plain joins);
- the HNSW statement (what a chatbot above ``SEARCH_EXACT_MAX`` runs; here on the new tenant's 800
  vectors) as the product runs it against its previous form (plain joins during the walk);
- a whole uncached ``search_run`` (semantic, hybrid);
- exact-duplicate flagging of the new document: the product's set-based statement against the
  correlated subquery it replaced (run once: it takes tens of seconds);
- the product's exact and HNSW statements for a twin of the new tenant (same shape, written
  before the statistics were taken, so ANALYZE knows it), interleaved with the new tenant's in the
  same rounds: the gap a new tenant pays, free of the machine's changing load;
- the same vector statements after ``ANALYZE`` (the figures the other benchmarks measure).

Prints a JSON summary. ``python bench/new_tenant.py [--rounds N] [--skip-replaced]`` (the last
leaves out the replaced duplicate query, which alone takes a minute or more).
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


PLAIN_JOINS = "\n        JOIN knowledge_chunk c ON c.id = {chunk} JOIN knowledge_document d ON d.id = c.document_id"


def _previous(sql: str) -> str:
    """The statement before its hits were looked up by key: plain joins (and the chatbot
    conditions on chunk and document the walk had)."""
    from search.selectors.vectors import KEY_LOOKUPS

    for chunk in ("e.chunk_id", "nn.chunk_id"):
        sql = sql.replace(KEY_LOOKUPS.format(chunk=chunk), PLAIN_JOINS.format(chunk=chunk))
    return sql.replace(
        "WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND d.status",
        "WHERE e.space_id = %(space)s AND e.chatbot_id = %(chatbot)s AND c.chatbot_id = %(chatbot)s "
        "AND d.chatbot_id = %(chatbot)s AND d.status",
    )


def _vector_statement(space, chatbot_id, vector, *, pinned: bool, exact: bool = True, previous: bool = False):
    from django.conf import settings
    from django.db import connection

    from knowledge.plans import plan_pinned
    from search.selectors import NO_FILTERS
    from search.selectors.vectors import _hnsw_settings, semantic_query

    sql, params = semantic_query(space=space, chatbot_id=chatbot_id, vector=vector, limit=10, filters=NO_FILTERS,
                                 exact=exact)  # fmt: skip
    sql = _previous(sql) if previous else sql

    def work():
        with connection.cursor() as cursor:
            if pinned and exact:
                plan_pinned(cursor)
            elif pinned:
                _hnsw_settings(cursor, ef_search=settings.SEARCH_HNSW_EF_SEARCH, max_scan_tuples=40000)
            cursor.execute(sql, params)
            cursor.fetchall()

    return work


VARIANTS = {
    "exact: product (pinned, hits by key)": {"pinned": True},
    "exact: previous (pinned, plain joins)": {"pinned": True, "previous": True},
    "exact: raw (unpinned)": {"pinned": False},
    "hnsw: product (hits by key)": {"pinned": True, "exact": False},
    "hnsw: previous (plain joins)": {"pinned": True, "exact": False, "previous": True},
}


TWIN_VARIANTS = {
    "exact: product, analysed twin": {"pinned": True},
    "hnsw: product, analysed twin": {"pinned": True, "exact": False},
}


def _vector_round(skewed, space, rounds: int) -> dict:
    from tenants.scoping import tenant_context

    variants = {name: (skewed.new, options) for name, options in VARIANTS.items()}
    variants.update({name: (skewed.twin, options) for name, options in TWIN_VARIANTS.items()})
    out = {name: [] for name in variants}
    for i in range(rounds):
        vector = skewed.vectors[i % len(skewed.vectors)]
        for name, (bundle, options) in variants.items():  # interleaved: the machine's load falls on all alike
            with tenant_context(bundle.tenant.pk):
                out[name].append(_timed(_vector_statement(space, bundle.chatbot.pk, vector, **options)))
    return {name: _ms(values) for name, values in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--skip-replaced", action="store_true", help="leave out the replaced duplicate query")
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
    skewed = skew.build(twin=True)
    summary = {"setup_seconds": round(time.perf_counter() - began, 1), "big_chunks": skew.BIG_CHUNKS,
               "new_chunks": skew.NEW_CHUNKS}  # fmt: skip
    bot = skewed.new.chatbot
    with tenant_context(skewed.new.tenant.pk):
        space = chatbot_space_ensure_active(chatbot=bot).space
        _vector_round(skewed, space, 3)  # warm
        summary["new tenant, before ANALYZE: vector statements"] = _vector_round(skewed, space, options.rounds)
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
            "raw (the correlated subquery it replaced)_ms": None if options.skip_replaced else round(_timed(old), 1),
        }
    with dbroles.owner_connect() as owner:
        for table in skew.TABLES:
            owner.execute(f"ANALYZE {table}")
    with tenant_context(skewed.new.tenant.pk):
        summary["new tenant, after ANALYZE: vector statements"] = _vector_round(skewed, space, options.rounds)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
