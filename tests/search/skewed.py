"""A skewed database, as a new customer meets production: one big tenant whose 60,000 chunks the
statistics know (``ANALYZE`` ran after they were written), and a brand-new tenant with a few
hundred chunks written after that, which the statistics do not know (autovacuum is held off for
the module, as it would not have run yet). Plan tests look at the new tenant's statements as the
app role under row-level security.

The big tenant's rows are written by the owner in bulk SQL (the fixture's setup, not code under
test) into an embedding space of their own without an HNSW index, so building them costs seconds;
the new tenant's rows go in as the app role in the tenant's scope, in the built-in space. Both
have search logs (50,000 analysed, 400 not), every seventh with a query vector (a gap)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

BIG_CHUNKS = 60_000
BIG_DOCUMENTS = 300
NEW_CHUNKS = 800
BIG_SEARCHES = 50_000
NEW_SEARCHES = 400
NEW_DOCUMENTS = 60  # beside the one holding its chunks: a document lookup that scans the tenant's is seen
TABLES = ("knowledge_chunk", "knowledge_chunkembedding", "knowledge_document", "search_searchlog")
WORDS = (
    "account password reset invoice payment refund shipping order delivery router printer login billing "
    "card plan upgrade cancel subscription warranty return address email phone support hours store"
).split()


@dataclass
class Skewed:
    big: object  # TenantBundle
    new: object
    new_document_id: int
    new_chunk_ids: list[int]
    vectors: np.ndarray  # the new tenant's chunk vectors, row i = chunk i
    twin: object | None = None  # with ``build(twin=True)``: a tenant like the new one whose rows ANALYZE saw


# Search logs of a chatbot over the last 29 days (the fixture's bulk setup, as the owner).
LOG_SQL = """
INSERT INTO search_searchlog (tenant_id, query_id, chatbot_id, source, query, effective_query, mode, filters,
    parameters, conversation_turns, result_count, result_chunk_ids, result_ranks, top_score, took_ms, cache_hit,
    embedding_space, variant, strategy, query_embedding, created_at)
SELECT t.tenant_id, gen_random_uuid(), t.id, 'api', 'query ' || (g %% 300), '', 'hybrid', '{}', '{}', 0, g %% 7,
    '[]', '[]', (g %% 100) / 100.0, 5 + g %% 20, g %% 3 = 0, 'local', '', 'exact',
    CASE WHEN g %% 7 = 0 THEN array_fill(0.05, ARRAY[384])::vector END, now() - (g %% 29) * interval '1 day'
FROM tenants_chatbot t CROSS JOIN generate_series(1, %(count)s) g WHERE t.id = %(chatbot)s
"""


def _texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=12)) + f" item {i}" for i in range(count)]


def build(*, twin: bool = False) -> Skewed:
    """The skewed database; ``twin`` adds a tenant shaped like the new one (800 chunks in one
    document, the built-in space) written before the statistics were taken: benchmarks time the
    two side by side, interleaved, instead of before and after an ANALYZE under another load."""
    from knowledge.models import Document
    from tenants import dbroles
    from tenants.services import tenant_bootstrap
    from tests.conftest import as_tenant

    big = tenant_bootstrap(name="Big Co", chatbot_name="Big support", username="big-owner", password="pw-big-123")
    with as_tenant(big):
        Document.objects.bulk_create(
            Document(tenant_id=big.tenant.pk, chatbot=big.chatbot, title=f"doc {i}", status="ready",
                     content_hash=f"big-{i}", original_filename=f"doc{i}.txt", content_type="document")
            for i in range(BIG_DOCUMENTS)
        )  # fmt: skip
    with dbroles.owner_connect() as owner:
        for table in TABLES:
            owner.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
        space_id = owner.execute(
            "INSERT INTO knowledge_embeddingspace (provider, model_name, version, dimensions, artifact, created_at) "
            "VALUES ('plan-test', 'skew', '1', 384, '', now()) RETURNING id"
        ).fetchone()[0]
        owner.execute(
            """
            INSERT INTO knowledge_chunk (tenant_id, chatbot_id, document_id, position, text, token_count, kind,
                metadata, heading_path, content_hash, created_at)
            SELECT %(t)s, %(c)s, d.id, g, (%(texts)s::text[])[1 + g %% 997], 14, 'text',
                jsonb_build_object('parity', g %% 2), '[]'::jsonb, md5('big-' || d.id || '-' || g), now()
            FROM knowledge_document d CROSS JOIN generate_series(1, %(per)s) g
            WHERE d.chatbot_id = %(c)s
            """,
            {"t": big.tenant.pk, "c": big.chatbot.pk, "per": BIG_CHUNKS // BIG_DOCUMENTS, "texts": _texts(997, 1)},
        )
        rng = np.random.default_rng(2)
        base = rng.normal(size=(500, 384)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        owner.execute(
            """
            INSERT INTO knowledge_chunkembedding (tenant_id, chatbot_id, chunk_id, space_id, embedding, created_at)
            SELECT c.tenant_id, c.chatbot_id, c.id, %(s)s, (%(vectors)s::text[])[1 + c.id %% 500]::vector, now()
            FROM knowledge_chunk c WHERE c.chatbot_id = %(c)s
            """,
            {"s": space_id, "c": big.chatbot.pk, "vectors": [json.dumps(v.round(5).tolist()) for v in base]},
        )
        owner.execute(LOG_SQL, {"chatbot": big.chatbot.pk, "count": BIG_SEARCHES})
    analysed = None
    if twin:
        analysed = tenant_bootstrap(name="Twin Co", chatbot_name="Twin support", username="twin-owner",
                                    password="pw-twin-123")  # fmt: skip
        twin_vectors = np.random.default_rng(4).normal(size=(NEW_CHUNKS, 384)).astype(np.float32)
        twin_vectors /= np.linalg.norm(twin_vectors, axis=1, keepdims=True)
        _small_tenant_rows(analysed, twin_vectors, seed=5)
    with dbroles.owner_connect() as owner:
        for table in TABLES:
            owner.execute(f"ANALYZE {table}")
    new = tenant_bootstrap(name="New Co", chatbot_name="New support", username="new-owner", password="pw-new-123")
    vectors = rng.normal(size=(NEW_CHUNKS, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    document_id, chunk_ids = _small_tenant_rows(new, vectors, seed=3)
    with dbroles.owner_connect() as owner:
        owner.execute(LOG_SQL, {"chatbot": new.chatbot.pk, "count": NEW_SEARCHES})
    return Skewed(big=big, new=new, new_document_id=document_id, new_chunk_ids=chunk_ids, vectors=vectors,
                  twin=analysed)  # fmt: skip


def _small_tenant_rows(bundle, vectors, *, seed: int) -> tuple[int, list[int]]:
    """A new-sized tenant's rows, as the app role in its scope: one document holding a chunk per
    vector, and ``NEW_DOCUMENTS`` more without chunks."""
    from knowledge.models import Document
    from tests.conftest import as_tenant, insert_vectors

    found = insert_vectors(bundle.chatbot, vectors, texts=_texts(len(vectors), seed), title="faq")
    with as_tenant(bundle):
        Document.objects.bulk_create(
            Document(tenant_id=bundle.tenant.pk, chatbot=bundle.chatbot, title=f"page {i}", status="ready",
                     content_hash=f"page-{i}", original_filename=f"page{i}.txt", content_type="document")
            for i in range(NEW_DOCUMENTS)
        )  # fmt: skip
    return found


def teardown(skewed: Skewed) -> None:
    """Every row of both tenants (``tenants_remove``), then the space and the autovacuum setting."""
    from tenants import dbroles

    bundles = [b for b in (skewed.big, skewed.new, skewed.twin) if b is not None]
    tenants_remove([b.tenant.pk for b in bundles], [b.username for b in bundles])
    with dbroles.owner_connect() as owner:
        owner.execute("DELETE FROM knowledge_embeddingspace WHERE provider = 'plan-test'")
        for table in TABLES:
            owner.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def tenants_remove(ids: list[int], usernames: list[str]) -> None:
    """Every row of these tenants, as the owner: tables referenced by others go last (tried in
    rounds until each table's rows are gone), then the tenants and their users."""
    import psycopg

    from tenants import dbroles

    with dbroles.owner_connect() as owner:
        tables = [row[0] for row in owner.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name = 'tenant_id' AND table_name <> 'tenants_auditevent'"
        )]  # fmt: skip
        for _ in range(len(tables) + 1):
            left = []
            for table in tables:
                try:
                    with owner.transaction():
                        owner.execute(f'DELETE FROM "{table}" WHERE tenant_id = ANY(%s)', [ids])
                except psycopg.errors.ForeignKeyViolation:
                    left.append(table)
            tables = left
            if not tables:
                break
        owner.execute("DELETE FROM tenants_tenant WHERE id = ANY(%s)", [ids])
        owner.execute("DELETE FROM auth_user WHERE username = ANY(%s)", [usernames])


def explain(sql: str, params, *, settings_sql: str | None = None) -> dict:
    """EXPLAIN (ANALYZE, FORMAT JSON) of a statement on the caller's connection (the app role in
    the current tenant scope), in a transaction that is rolled back (an UPDATE changes nothing)."""
    from django.db import connection, transaction

    class Rollback(Exception):
        pass

    plan = {}
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if settings_sql:
                cursor.execute(settings_sql)
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            plan.update(cursor.fetchone()[0][0])
            raise Rollback
    except Rollback:
        pass
    return plan


def nodes(plan: dict):
    stack = [plan["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", ()))


def rows_examined(plan: dict) -> int:
    """Rows every scan node produced or filtered out, over all its loops."""
    total = 0
    for node in nodes(plan):
        if "Scan" in node["Node Type"]:
            loops = node.get("Actual Loops", 1)
            total += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    return total


def rescanning_loops(plan: dict, *, tenant_rows: int) -> list[str]:
    """Nested loops whose inner side scans many rows on each of many loops: the shape that makes a
    new tenant's statement quadratic in its own rows."""
    found = []
    for node in nodes(plan):
        if node["Node Type"] != "Nested Loop" or len(node.get("Plans", ())) < 2:
            continue
        inner = node["Plans"][1]
        loops = inner.get("Actual Loops", 1)
        per_loop = sum(
            n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
            for n in nodes({"Plan": inner})
            if "Scan" in n["Node Type"]
        )
        if loops > 10 and per_loop > max(50, tenant_rows // 20):
            found.append(f"{inner['Node Type']} x{loops} loops, {per_loop} rows a loop")
    return found


SETTINGS_PREFIXES = ("select set_config(", "set ")


def statements_of(work) -> list[tuple[str, list[str]]]:
    """The statements ``work()`` ran on the default connection, each with the planner settings
    the statements just before it set (``set_config``/``SET``): what ``plans_of`` replays."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        work()
    found, pending = [], []
    for query in captured.captured_queries:
        sql = (query["sql"] or "").strip()
        lowered = sql.lower()
        if lowered.startswith(SETTINGS_PREFIXES):
            pending.append(sql)
        elif lowered.startswith(("select", "with", "update", "insert", "delete")) and "pg_notify" not in lowered:
            found.append((sql, pending))
            pending = []
        else:
            pending = [] if lowered.startswith(("release", "commit", "rollback")) else pending
    return found


def plans_of(work) -> list[tuple[str, dict]]:
    """EXPLAIN ANALYZE of every statement ``work()`` runs, replayed with its planner settings in a
    rolled-back transaction each, in the current scope."""
    from django.db import connection, transaction

    class Rollback(Exception):
        pass

    out = []
    for sql, settings_sql in statements_of(work):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for setting in settings_sql:
                    cursor.execute(setting)
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)  # no parameters: no % escaping
                out.append((sql, cursor.fetchone()[0][0]))
                raise Rollback
        except Rollback:
            pass
    return out
