"""Plans of the hot statements for a brand-new tenant beside a big analysed one
(tests/search/skewed.py): as the app role under row-level security, before any ANALYZE knows the
new tenant's rows. No nested loop rescans the tenant's rows; rows examined stay a small multiple
of the tenant's own. The data is committed once for the module (a transactional test's flush
would empty it); each test runs in a transaction rolled back at its end."""

import pytest

from tests.search import skewed as skew

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def skewed(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        built = skew.build()
        yield built
        skew.teardown(built)


def _bounded(plans, *, rows: int, allowed: int = 0) -> None:
    """No statement rescans the tenant's rows in a nested loop, and each examines at most eight
    rows per row of the tenant's (``allowed`` more for work that is quadratic by nature)."""
    assert plans
    for sql, plan in plans:
        where = " ".join(sql.split())[:200]
        assert skew.rescanning_loops(plan, tenant_rows=rows) == [] or allowed, where
        assert skew.rows_examined(plan) <= 8 * rows + allowed, (skew.rows_examined(plan), where)


@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_a_new_tenants_searches_examine_only_its_rows_a_few_times(skewed, mode):
    """Exact vector search (the new tenant is below the HNSW size), the candidate count, BM25
    statistics and ranking, and hybrid's cosines. Unpinned, the exact statement examined 326,920
    rows for 800 chunks (a nested-loop semi join); pinned to hash joins, 3,212."""
    from search.arguments import SearchArguments
    from search.services import search_run
    from tests.conftest import as_tenant

    bot = skewed.new.chatbot
    args = SearchArguments(query="reset my password for the router", chatbot_id=bot.pk, mode=mode, max_results=10)
    with as_tenant(skewed.new):
        plans = skew.plans_of(lambda: search_run(chatbot=bot, args=args, log=False, use_cache=False))
        result = search_run(chatbot=bot, args=args, log=False, use_cache=False)
    assert len(result.results) == 10
    expected = {"semantic": {"WITH cand"}, "keyword": {"@@"}, "hybrid": {"WITH cand", "@@"}}[mode]
    text = " ".join(" ".join(sql.split()) for sql, _ in plans)
    assert all(piece in text for piece in expected), mode  # the statements looked at are the real ones
    _bounded(plans, rows=skew.NEW_CHUNKS)


def test_a_new_tenants_duplicate_flagging_is_linear_exact_and_bounded_near(skewed):
    """Exact duplicates: was a correlated subquery per chunk (512,640,800 rows examined, 41 s for
    800 chunks); now one key lookup of the document's hashes. Near duplicates compare each chunk
    with the chatbot's vectors once (n x n, inherent to an exact nearest neighbour), never
    re-joining the chatbot's rows per chunk (was 86,934,800 rows, 12 s)."""
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import flag_exact_duplicates, flag_near_duplicates
    from tests.conftest import as_tenant

    bot, n = skewed.new.chatbot, skew.NEW_CHUNKS
    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space
        exact = skew.plans_of(
            lambda: flag_exact_duplicates(document_id=skewed.new_document_id, exclude_document_id=None)
        )
        _bounded(exact, rows=n)
        near = skew.plans_of(
            lambda: flag_near_duplicates(
                space=space, document_id=skewed.new_document_id, chatbot_id=bot.pk, threshold=0.95,
                exclude_document_id=None,
            )
        )  # fmt: skip
        _bounded(near, rows=n, allowed=n * n)
        loops = [found for _, plan in near for found in skew.rescanning_loops(plan, tenant_rows=n)]
        assert all(found.startswith(("Subquery Scan", "CTE Scan")) for found in loops), loops  # the one n x n


def test_a_new_tenants_embedding_walks_read_each_row_a_few_times(skewed):
    """What ingestion embeds (a document's chunks without a current vector, in batches) and what a
    re-embedding into another space walks and counts. Unpinned, one batch of the document's walk
    examined 321,200 rows and the missing count 641,600."""
    from knowledge.models import EmbeddingSpace
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import chunks_missing_count, chunks_to_embed
    from tests.conftest import as_tenant

    bot = skewed.new.chatbot
    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space
        other = EmbeddingSpace.objects.get(provider="plan-test")  # the new tenant has no vectors there
        walks = skew.plans_of(
            lambda: (
                chunks_to_embed(space=space, limit=64, document_id=skewed.new_document_id),
                chunks_to_embed(space=other, limit=64, chatbot_id=bot.pk),
                chunks_missing_count(space=other, chatbot_id=bot.pk),
            )
        )
        assert len(walks) == 3
        _bounded(walks, rows=skew.NEW_CHUNKS)
        assert chunks_missing_count(space=other, chatbot_id=bot.pk) == skew.NEW_CHUNKS
        assert len(chunks_to_embed(space=other, limit=64, chatbot_id=bot.pk)) == 64
