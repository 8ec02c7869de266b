"""Vector analysis (search.services.analysis): clusters, outliers, near-duplicates, PCA,
intrinsic dimension and the map, on a chatbot whose vectors have a known structure (inserted
as the tenant, straight in SQL: five topics in a 20-dimensional subspace, three far outliers,
one exact duplicate), and a real search's knowledge gap overlaid on the map."""

import json

import numpy as np
import pytest

from tests.conftest import as_tenant, insert_vectors

pytestmark = pytest.mark.django_db

DIMS, SUBSPACE, PER_TOPIC = 384, 20, 30
TOPICS = {
    "billing": ["invoice", "refund", "payment", "charge", "receipt", "billing"],
    "shipping": ["parcel", "courier", "delivery", "tracking", "shipment", "dispatch"],
    "account": ["password", "login", "username", "profile", "verification", "signin"],
    "router": ["router", "wifi", "firmware", "modem", "antenna", "ethernet"],
    "warranty": ["warranty", "repair", "defect", "guarantee", "replacement", "broken"],
}
BANKING_PER_INTENT = 20
COMMON = ["please", "customer", "support", "question", "help"]


def structured_chunks(seed: int = 3) -> dict:
    """Texts, vectors and the truth: topic per chunk, which are outliers, which are duplicates."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIMS, SUBSPACE)))  # 384 x 10, orthonormal columns
    texts, vectors, topics = [], [], []
    for t, (topic, words) in enumerate(TOPICS.items()):
        for _ in range(PER_TOPIC):
            vectors.append(basis[:, t] + 0.12 * basis @ rng.standard_normal(SUBSPACE))
            texts.append(" ".join([*rng.choice(words, 5), *rng.choice(COMMON, 3)]))
            topics.append(topic)
    outliers = []
    for i in range(3):  # random directions of the whole space: nothing like any topic
        outliers.append(len(texts))
        vectors.append(rng.standard_normal(DIMS))
        texts.append(f"unrelated note number {i} about lunch menus")
        topics.append(None)
    duplicate_of = 7  # an exact copy of a billing chunk
    vectors.append(vectors[duplicate_of].copy())
    texts.append(texts[duplicate_of])
    topics.append(topics[duplicate_of])
    vectors = np.asarray(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {"texts": texts, "vectors": vectors, "topics": topics, "outliers": outliers,
            "duplicates": [duplicate_of, len(texts) - 1]}  # fmt: skip


def insert_chunks(chatbot, texts: list[str], vectors: np.ndarray, title: str = "synthetic", space=None) -> tuple:
    return insert_vectors(chatbot, vectors, texts=texts, title=title, space=space)


@pytest.fixture
def structured(bundle):
    truth = structured_chunks()
    document_id, ids = insert_chunks(bundle.chatbot, truth["texts"], truth["vectors"])
    return {**truth, "document_id": document_id, "ids": ids, "bundle": bundle}


def analyse(bundle, **options) -> dict:
    from search.services.analysis import vector_analysis

    seen = []
    with as_tenant(bundle):
        report = vector_analysis(chatbot=bundle.chatbot, progress=lambda p, s: seen.append((p, s)), **options)
    assert seen[-1] == (100, "done") and [p for p, _ in seen] == sorted(p for p, _ in seen)
    json.dumps(report)  # serialisable as it is
    return report


@pytest.mark.shared  # first in the file: an ingestion after a search in this process runs several times slower
def test_banking77_clusters_follow_the_intents(bundle, settings):
    """Real customer queries (BANKING77, 20 of each of the 77 intents) uploaded as an FAQ (the
    query as question and answer, its intent a metadata column that is not embedded) and embedded
    by the local model through the normal ingestion path: the clusters found follow the intents
    far better than a random assignment with the same k."""
    import csv
    import io

    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    from knowledge.models import Chunk
    from tests.conftest import ingest, make_upload
    from tests.test_training_shared import banking77

    settings.VECTOR_CHATBOT_INDEX_MIN = 10_000  # searched exactly: no index build on the maintenance role
    intents = banking77()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "answer", "intent"])
    for intent, queries in intents.items():
        writer.writerows([query, query, intent] for query in queries[:BANKING_PER_INTENT])
    document = ingest(bundle, make_upload("banking77.csv", out.getvalue()), content_type="faq")
    assert document.status == "ready", document.error
    with as_tenant(bundle):
        intent_of = dict(Chunk.objects.filter(chatbot=bundle.chatbot).values_list("id", "metadata__intent"))
    assert len(intent_of) == 77 * BANKING_PER_INTENT

    report = analyse(bundle)
    points = report["map"]["points"]
    assert len(points) == len(intent_of)
    truth = [intent_of[p["chunk_id"]] for p in points]
    found = [p["cluster"] for p in points]
    k, rng = report["k"], np.random.default_rng(0)
    chance = rng.integers(0, k, len(found)).tolist()  # a random assignment with the same k
    nmi, nmi_chance = normalized_mutual_info_score(truth, found), normalized_mutual_info_score(truth, chance)
    ami, ami_chance = adjusted_mutual_info_score(truth, found), adjusted_mutual_info_score(truth, chance)
    purity, purity_chance = _purity(truth, found), _purity(truth, chance)
    most = k * BANKING_PER_INTENT / len(found)  # a cluster's majority is at most one intent's 20 queries
    print(f"\nBANKING77 {len(found)} queries, 77 intents: k = {k} ({report['k_method']}, silhouette "
          f"{report['silhouette']}); NMI {nmi:.3f} (random {nmi_chance:.3f}), AMI {ami:.3f} (random "
          f"{ami_chance:.3f}), purity {purity:.3f} (random {purity_chance:.3f}, at most {most:.3f} with k = {k}); "
          f"components 90/95 % {report['pca']['components_90']}/{report['pca']['components_95']}, intrinsic "
          f"dimension {report['intrinsic_dimension']}, outliers {report['outliers_total']}, near-duplicate "
          f"chunks {report['near_duplicates']['chunks_in_groups']}; analysis {report['took_seconds']} s")  # fmt: skip
    # NMI of a random assignment is biased upwards by k (about 0.19 for 27 clusters of 1,540 points),
    # so the chance-corrected AMI (0 for random) carries the "far better than random" claim
    assert nmi >= 0.5 and nmi >= 3 * nmi_chance, (nmi, nmi_chance)
    assert ami >= 0.45 and abs(ami_chance) < 0.05, (ami, ami_chance)
    assert purity >= 0.7 * most and purity >= 4 * purity_chance, (purity, purity_chance, most)


def _purity(truth: list, found: list) -> float:
    from collections import Counter

    majority = Counter()
    for cluster, count in Counter(zip(found, truth)).items():
        majority[cluster[0]] = max(majority[cluster[0]], count)
    return sum(majority.values()) / len(truth)


def test_the_analysis_finds_the_topics_outliers_duplicates_and_a_logged_gap(structured, api):
    bundle, ids, topics = structured["bundle"], structured["ids"], structured["topics"]
    query = "Can I pay for a gym membership with bitcoin?"
    answer = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": query, "mode": "semantic"},
                      format="json")  # fmt: skip
    assert answer.status_code == 200
    assert answer.json()["results"][0]["similarity_score"] < 0.35  # a gap: the log keeps its vector

    report = analyse(bundle, max_points=100)
    n = len(ids)
    assert report["space"] == "local:all-MiniLM-L6-v2@1" and report["chunks"] == report["sampled"] == n
    assert report["dimensions"] == DIMS and "note" not in report

    # five clusters, each one topic; the labels are the topic's own words
    assert report["k"] == 5 and report["k_method"] == "silhouette" and report["silhouette"] > 0.3
    assert sum(c["size"] for c in report["clusters"]) == n
    cluster_of = {p["chunk_id"]: p["cluster"] for p in report["map"]["points"]}
    assert len(report["map"]["points"]) == 100  # sampled down to max_points
    full = analyse(bundle)
    cluster_of = {p["chunk_id"]: p["cluster"] for p in full["map"]["points"]}
    assert len(cluster_of) == n and set(cluster_of.values()) == set(range(5))
    for topic, words in TOPICS.items():
        members = [cluster_of[chunk] for chunk, t in zip(ids, topics) if t == topic]
        majority = max(set(members), key=members.count)
        assert members.count(majority) / len(members) >= 0.95, (topic, members)
        cluster = next(c for c in full["clusters"] if c["id"] == majority)
        assert set(cluster["terms"][:3]) <= set(words), (topic, cluster["terms"])
        assert cluster["cohesion"] > 0.6 and len(cluster["examples"]) == 3
        assert all(e["document_id"] == structured["document_id"] for e in cluster["examples"])

    # the three far chunks are the outliers, least similar first; nothing else is
    outliers = {o["chunk_id"] for o in report["outliers"]}
    assert outliers == {ids[i] for i in structured["outliers"]} and report["outliers_total"] == 3
    for outlier in report["outliers"]:
        assert outlier["distance"] > 0.7 and outlier["z"] > 3.5 and outlier["snippet"].startswith("unrelated")

    # the exact copy and its original make the one near-duplicate group
    duplicates = report["near_duplicates"]
    assert duplicates["chunks_in_groups"] == 2 and duplicates["groups_total"] == 1
    assert {c["chunk_id"] for c in duplicates["groups"][0]["chunks"]} == {ids[i] for i in structured["duplicates"]}

    # the vectors span twenty directions (plus three stray ones); the topics' spheres are ~19-dimensional
    pca = report["pca"]
    assert len(pca["explained"]) == 50 and pca["cumulative"] == sorted(pca["cumulative"])
    assert pca["components_90"] <= pca["components_95"] <= 23
    assert 10 <= report["intrinsic_dimension"] <= 25, report["intrinsic_dimension"]

    # the unanswered query is on the map, projected by the same PCA
    (gap,) = report["map"]["gaps"]
    assert gap["query"] == query and isinstance(gap["x"], float) and 0 <= gap["cluster"] < 5


def test_the_same_seed_gives_the_same_report(structured):
    first, second = analyse(structured["bundle"], seed=4), analyse(structured["bundle"], seed=4)
    first.pop("took_seconds"), second.pop("took_seconds")
    assert first == second


def test_a_big_chatbot_is_sampled_and_clustered_in_mini_batches(bundle, settings):
    """Past VECTOR_ANALYSIS_MAX_CHUNKS a seeded sample is analysed; past 4,000 points k is chosen
    on a sample and the clusters are fitted by mini-batch k-means over all of them."""
    rng = np.random.default_rng(11)
    basis, _ = np.linalg.qr(rng.standard_normal((DIMS, SUBSPACE)))
    topic = rng.integers(0, 5, 4_300)
    vectors = basis[:, topic].T + 0.12 * rng.standard_normal((len(topic), SUBSPACE)) @ basis.T
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    from knowledge.models import EmbeddingSpace

    with as_tenant(bundle):  # a space of the tenant's own, with no HNSW index for thousands of rows rolled back
        space = EmbeddingSpace.objects.create(
            tenant=bundle.tenant, provider="local", model_name="synthetic", version="1", dimensions=DIMS
        )
    texts = [f"chunk {i}" for i in range(len(topic))]
    _, ids = insert_chunks(bundle.chatbot, texts, vectors, title="big", space=space)
    topic_of = dict(zip(ids, topic.tolist()))
    settings.VECTOR_ANALYSIS_MAX_CHUNKS = 4_100

    report = analyse(bundle, space=space, max_points=400, seed=1)
    assert report["space"] == "local:synthetic@1"
    assert report["chunks"] == 4_300 and report["sampled"] == 4_100
    assert report["k"] == 5 and sum(c["size"] for c in report["clusters"]) == 4_100
    points = report["map"]["points"]
    assert len(points) == 400 and len({p["chunk_id"] for p in points}) == 400
    for cluster in range(5):
        members = [topic_of[p["chunk_id"]] for p in points if p["cluster"] == cluster]
        assert max(members.count(t) for t in set(members)) / len(members) >= 0.95
    from search.selectors import chunk_vectors

    with as_tenant(bundle):  # the seed picks the sample: the map's points are of seed 1's
        picked = {seed: {row[0] for row in chunk_vectors(space=space, chatbot_id=bundle.chatbot.pk,
                                                         limit=4_100, seed=seed)} for seed in (1, 2)}  # fmt: skip
    assert {p["chunk_id"] for p in points} <= picked[1] and picked[1] != picked[2]


def test_a_chatbot_with_three_chunks_gets_a_note(bundle):
    vectors = np.eye(3, DIMS)
    insert_chunks(bundle.chatbot, ["one", "two", "three"], vectors, title="tiny")
    report = analyse(bundle)
    assert report["chunks"] == 3 and "at least 10" in report["note"]
    assert report["clusters"] == [] and report["map"] == {"points": [], "gaps": []} and report["k"] == 0


def test_another_tenants_vectors_are_not_read(structured, other_bundle):
    from knowledge.services import chatbot_space_ensure_active

    with as_tenant(other_bundle):  # the same built-in space as the first tenant's chatbot
        chatbot_space_ensure_active(chatbot=other_bundle.chatbot)
    report = analyse(other_bundle)
    assert report["space"] == "local:all-MiniLM-L6-v2@1" and report["chunks"] == 0 and report["note"]


def test_the_partial_renders_the_charts_and_tables(structured):
    from django.template.loader import render_to_string

    report = analyse(structured["bundle"])
    html = render_to_string("dashboard/_vector_analysis.html", {"analysis": report})
    for container in ("va-map", "va-sizes", "va-pca"):
        assert f'<svg class="chart" id="{container}"' in html
    assert 'id="vector-analysis"' in html and "application/json" in html
    assert html.count('<tr data-cluster="') == 5
    assert html.count('<tr data-outlier="') == 3
    assert html.count('<tr data-duplicates="') == 1
    assert f'href="/documents/{structured["document_id"]}/"' in html
    assert "k = <b>5</b>" in html

    note = render_to_string("dashboard/_vector_analysis.html", {"analysis": {"note": "Only 3 chunks", "chunks": 3}})
    assert "Only 3 chunks" in note and "va-map" not in note
    skipped = render_to_string("dashboard/_vector_analysis.html", {"analysis": {"skipped": "not available"}})
    assert "not available" in skipped and "<script>" not in skipped
