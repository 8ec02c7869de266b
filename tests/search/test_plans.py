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


def test_near_duplicates_of_a_chatbot_with_its_own_index_walk_it(skewed, monkeypatch):
    """Past ``NEAR_INDEX_MIN_OTHERS`` vectors, a chatbot with its own HNSW index has each chunk's
    ten nearest read through it and their chunks and documents looked up by key, never hash joins
    of the tenant's rows per chunk (that plan took 4.1 s for 770 FAQ rows against 4,600 vectors,
    the walk 0.15 s) — and finds the near duplicates the exact comparison finds: the second half
    of the document's vectors made noisy copies of the first half (cosine ~0.98)."""
    import numpy as np

    from knowledge import vectors
    from knowledge.models import Chunk, ChunkEmbedding
    from knowledge.services import chatbot_space_ensure_active
    from tests.conftest import as_tenant

    bot, n, document = skewed.new.chatbot, skew.NEW_CHUNKS, skewed.new_document_id

    def flagged() -> set:
        rows = Chunk.objects.filter(document_id=document, near_duplicate_of__isnull=False)
        return set(rows.values_list("id", "near_duplicate_of_id"))

    def flag() -> int:
        return vectors.flag_near_duplicates(
            space=space, document_id=document, chatbot_id=bot.pk, threshold=0.95, exclude_document_id=None
        )

    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space
        rows = list(ChunkEmbedding.objects.filter(chunk__document_id=document, space=space).order_by("chunk_id"))
        half, rng = len(rows) // 2, np.random.default_rng(9)
        for source, copy in zip(rows[:half], rows[half:]):
            vector = np.asarray(source.embedding) + rng.normal(0, 0.01, 384)
            copy.embedding = vector / np.linalg.norm(vector)
        ChunkEmbedding.objects.bulk_update(rows[half:], ["embedding"])
        flag()
        exact = flagged()
        assert len(exact) >= half - 5, len(exact)
        Chunk.objects.filter(document_id=document).update(near_duplicate_of=None)
        vectors.chatbot_index_create(space=space, chatbot_id=bot.pk)  # in this test's transaction
        monkeypatch.setattr(vectors, "NEAR_INDEX_MIN_OTHERS", 0)
        monkeypatch.setattr(vectors, "_known", (0.0, frozenset()))
        assert vectors.chatbot_index_exists(space_id=space.pk, chatbot_id=bot.pk)
        walks = skew.plans_of(flag)
        flag()
        walked = flagged()
    text = " ".join(" ".join(sql.split()) for sql, _ in walks)
    assert "LIMIT 10" in text  # the walk, not the exact comparison
    for _, plan in walks:
        assert skew.rescanning_loops(plan, tenant_rows=n) == []
        assert skew.rows_examined(plan) <= 40 * n, skew.rows_examined(plan)  # ten neighbours and their keys
    assert len(walked & exact) >= 0.9 * len(exact), (len(walked & exact), len(exact))


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


def _uses_index(plans, prefix: str) -> bool:
    return any((node.get("Index Name") or "").startswith(prefix) for _, plan in plans for node in skew.nodes(plan))


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
def test_a_big_new_tenants_hnsw_walk_looks_each_hit_up_by_key(skewed, settings, mode):
    """A new tenant above the exact-search size (the threshold lowered to 100 instead of writing
    thousands of rows: the estimates, one row for any new chatbot, are what shape the plan, not
    its size). The walk drives; each hit's chunk and document are key lookups. As plain joins
    the planner scanned the chatbot's chunks per hit (32,980 rows for 40 hits); now a few
    rows per hit."""
    from search.arguments import SearchArguments
    from search.services import search_run
    from tests.conftest import as_tenant

    settings.SEARCH_EXACT_MAX = 100
    bot = skewed.new.chatbot
    args = SearchArguments(query="reset my password for the router", chatbot_id=bot.pk, mode=mode, max_results=10)
    with as_tenant(skewed.new):
        plans = skew.plans_of(lambda: search_run(chatbot=bot, args=args, log=False, use_cache=False))
        result = search_run(chatbot=bot, args=args, log=False, use_cache=False)
    assert len(result.results) == 10
    assert _uses_index(plans, "chunkemb_hnsw_space_")  # the HNSW statement is among those looked at
    _bounded(plans, rows=skew.NEW_CHUNKS)
    walk = [plan for sql, plan in plans if "hnsw" not in sql and _uses_index([(sql, plan)], "chunkemb_hnsw")]
    assert walk and all(skew.rows_examined(plan) <= 400 for plan in walk)  # ~ef_search, not the chatbot's rows


def test_a_new_tenants_ingestion_reads_and_backfill_walks_are_bounded(skewed):
    """What a document's ingestion counts before embedding (its chunks with a current vector: was a
    nested loop re-reading every vector per chunk, 640,800 rows), the refresh's walk of vectors
    made before inputs were recorded, and a later batch of a re-embedding's backfill walk."""
    from knowledge.models import Chunk, EmbeddingSpace
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import chunks_to_embed, embeddings_current
    from tests.conftest import as_tenant

    bot = skewed.new.chatbot
    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space
        other = EmbeddingSpace.objects.get(provider="plan-test")
        middle = sorted(Chunk.objects.filter(chatbot=bot).values_list("id", flat=True))[skew.NEW_CHUNKS // 2]
        plans = skew.plans_of(
            lambda: (
                embeddings_current(space=space, document_id=skewed.new_document_id),
                chunks_to_embed(space=space, limit=64, chatbot_id=bot.pk, unknown_input_only=True, after=middle),
                chunks_to_embed(space=other, limit=64, chatbot_id=bot.pk, after=middle),
            )
        )
        assert len(plans) == 3
        _bounded(plans, rows=skew.NEW_CHUNKS)
        assert embeddings_current(space=space, document_id=skewed.new_document_id) == 0  # vectors made without inputs
        assert len(chunks_to_embed(space=other, limit=64, chatbot_id=bot.pk, after=middle)) == 64


def test_a_new_tenants_analytics_optimizer_and_analysis_reads_are_bounded(skewed):
    """Search analytics and knowledge gaps over the search log (the big tenant's 50,000 analysed
    rows beside the new tenant's 400), the optimizer's sample and count, the analysis's count and
    vectors (were 322,000 rows each, a nested loop over the chatbot's chunks per vector)."""
    from knowledge.services import chatbot_space_ensure_active
    from search.selectors.analysis import chunk_vector_count, chunk_vectors
    from search.selectors.analytics import gap_query_vectors, knowledge_gaps, search_analytics
    from search.selectors.optimize import chunk_vectors_sample, vector_count
    from tests.conftest import as_tenant

    bot, tenant = skewed.new.chatbot, skewed.new.tenant
    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space
        analytics = skew.plans_of(
            lambda: (
                search_analytics(tenant=tenant, chatbot_id=bot.pk, days=30, low_score=0.35),
                knowledge_gaps(tenant=tenant, chatbot_id=bot.pk, days=30, low_score=0.35),
                gap_query_vectors(tenant=tenant, chatbot_id=bot.pk, space_key="local", days=30, low_score=0.35),
            )
        )
        _bounded(analytics, rows=skew.NEW_SEARCHES)
        vectors = skew.plans_of(
            lambda: (
                chunk_vectors_sample(space=space, chatbot_id=bot.pk, count=50),
                vector_count(space=space, chatbot_id=bot.pk),
                chunk_vector_count(space=space, chatbot_id=bot.pk),
                chunk_vectors(space=space, chatbot_id=bot.pk, limit=300),
            )
        )
        assert len(vectors) == 4
        _bounded(vectors, rows=skew.NEW_CHUNKS)
        assert search_analytics(tenant=tenant, chatbot_id=bot.pk, days=30, low_score=0.35)["searches"] == 400
        assert chunk_vector_count(space=space, chatbot_id=bot.pk) == skew.NEW_CHUNKS


def test_a_new_tenants_training_data_reads_are_bounded(skewed, settings):
    """Training-data collection (the chatbot's FAQ rows, feedback and chunks read), the pairs' texts, the
    size check, and the corpus and stored vectors that hard-negative mining and evaluation read
    (``training_corpus`` and ``training_corpus_vectors``: one hash join, one read of the
    chatbot's vectors, where the ORM forms joined each chunk to its document by a scan of the
    tenant's documents and sent every chunk id as ``IN (...)``)."""
    from knowledge.services import chatbot_space_ensure_active
    from tenants.errors import DomainError
    from tests.conftest import as_tenant
    from training.selectors import training_corpus, training_corpus_vectors
    from training.services.data import ensure_enough_pairs, pair_texts, training_pairs_collect

    settings.TRAINING_MIN_PAIRS = 10**6
    bot = skewed.new.chatbot
    with as_tenant(skewed.new):
        space = chatbot_space_ensure_active(chatbot=bot).space

        def work():
            training_pairs_collect(chatbot=bot, llm=False)
            pair_texts(chatbot=bot, split="train")
            with pytest.raises(DomainError):
                ensure_enough_pairs(chatbot=bot)
            ids, _ = training_corpus(chatbot=bot)
            training_corpus_vectors(chatbot=bot, space=space, ids=ids)

        plans = skew.plans_of(work)
        assert any("training_trainingpair" in sql for sql, _ in plans)
        assert any("knowledge_chunkembedding" in sql for sql, _ in plans)
        _bounded(plans, rows=skew.NEW_CHUNKS)
        ids, texts = training_corpus(chatbot=bot)
        assert ids == sorted(skewed.new_chunk_ids) and len(texts) == skew.NEW_CHUNKS
        vectors = training_corpus_vectors(chatbot=bot, space=space, ids=ids)
        assert vectors.shape == (skew.NEW_CHUNKS, 384)
        assert abs(float(vectors[0] @ skewed.vectors[0]) - 1.0) < 1e-3  # row i is chunk i's vector
        assert training_corpus_vectors(chatbot=bot, space=space, ids=[*ids, -1]) is None
