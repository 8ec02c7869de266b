"""The report: reads the vectors (``search.selectors.chunk_vectors``) and puts the parts together."""

from __future__ import annotations

import time

from django.conf import settings

from search.selectors import chunk_vector_count, chunk_vectors
from search.services.analysis.clusters import (
    CLUSTER_COMPONENTS,
    REDUCE_ABOVE,
    Progress,
    describe_clusters,
    find_outliers,
    topic_clusters,
)
from search.services.analysis.data import Chunks
from search.services.analysis.geometry import (
    DUPLICATE_COSINE,
    intrinsic_dimension,
    near_duplicates,
    pca_report,
    projection_map,
)
from search.services.serving import serving_for

MIN_CHUNKS = 10
MAX_ANALYSED = 100_000  # the most VECTOR_ANALYSIS_MAX_CHUNKS may ask for
MAX_POINTS = 20_000  # map points, whatever the caller asks


def vector_analysis(*, chatbot, space=None, progress: Progress | None = None, max_points: int = 5000, seed: int = 0):
    """A JSON-serialisable report on the chatbot's vectors in ``space`` (default: its serving
    space; the vectors are read from the space's store). ``progress(percent, stage)`` is called
    as the work goes on. Fewer than ``MIN_CHUNKS`` vectors give a report with a ``note``."""
    began = time.perf_counter()
    tell = progress or (lambda percent, stage: None)
    max_points = max(MIN_CHUNKS, min(int(max_points), MAX_POINTS))
    seed = int(seed) % 2**31
    if space is None:
        serving = serving_for(chatbot, create=False)  # a read: no space is made for a chatbot without one
        if serving is None:
            report = _empty_report("", 0, 0)
            report["note"] = "The chatbot has no embedding space yet: upload content first."
            tell(100, "done")
            return report
        space = serving.space
    tell(2, "reading vectors")
    total = chunk_vector_count(space=space.store, chatbot_id=chatbot.pk)
    limit = max(MIN_CHUNKS, min(int(settings.VECTOR_ANALYSIS_MAX_CHUNKS), MAX_ANALYSED))  # past it, a sample
    rows = chunk_vectors(space=space.store, chatbot_id=chatbot.pk, limit=limit, seed=seed)
    report = _empty_report(space.key, total, len(rows))
    if len(rows) < MIN_CHUNKS:
        report["note"] = (
            f"Only {len(rows)} chunk{'s' if len(rows) != 1 else ''} with a vector in {space.key}: "
            f"vector analysis needs at least {MIN_CHUNKS}. Upload more content and run it again."
        )
        report["took_seconds"] = round(time.perf_counter() - began, 2)
        tell(100, "done")
        return report

    chunks = Chunks(rows)
    x = chunks.vectors
    report["dimensions"] = int(x.shape[1])
    tell(6, "principal components")
    pca, report["pca"] = pca_report(x, seed)
    # k-means on the vectors themselves; past REDUCE_ABOVE chunks, on their first principal
    # components (the cost of k-means grows with the dimensions; the clusters barely change)
    reduced = x if len(x) <= REDUCE_ABOVE else pca.transform(x)[:, :CLUSTER_COMPONENTS]
    tell(10, "clustering")
    k, silhouette, method, labels, centroids = topic_clusters(x, reduced, seed, tell)
    similarity = x @ centroids.T  # cosine to every (unit) centroid
    tell(60, "labelling clusters")
    report.update(k=k, silhouette=silhouette, k_method=method)
    report["clusters"] = describe_clusters(chunks, labels, centroids, similarity)
    tell(70, "finding outliers")
    report["outliers"], report["outliers_total"] = find_outliers(chunks, labels, similarity)
    tell(78, "finding near-duplicates")
    report["near_duplicates"] = near_duplicates(chunks)
    tell(86, "intrinsic dimension")
    report["intrinsic_dimension"] = intrinsic_dimension(x, seed)
    tell(94, "drawing the map")
    report["map"] = projection_map(chatbot, space, chunks, labels, centroids, pca, max_points, seed)
    report["took_seconds"] = round(time.perf_counter() - began, 2)
    tell(100, "done")
    return report


def _empty_report(space_key: str, total: int, sampled: int) -> dict:
    return {
        "space": space_key,
        "chunks": int(total),
        "sampled": int(sampled),
        "dimensions": None,
        "k": 0,
        "k_method": None,
        "silhouette": None,
        "clusters": [],
        "outliers": [],
        "outliers_total": 0,
        "near_duplicates": {"groups": [], "groups_total": 0, "chunks_in_groups": 0, "threshold": DUPLICATE_COSINE},
        "pca": {"explained": [], "cumulative": [], "components_90": None, "components_95": None},
        "intrinsic_dimension": None,
        "map": {"points": [], "gaps": []},
        "took_seconds": 0.0,
    }
