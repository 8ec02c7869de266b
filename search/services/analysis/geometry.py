"""Near-duplicate groups, principal components, intrinsic dimension and the 2-D map."""

from __future__ import annotations

import numpy as np
from django.conf import settings

from search.selectors import gap_query_vectors
from search.services.analysis.data import Chunks, r, unit

DUPLICATE_COSINE = 0.97
DUPLICATE_NEIGHBOURS = 16
INTRINSIC_SAMPLE = 5_000
PCA_CURVE = 50
LIST_CAP = 50
GROUP_MEMBERS = 10
GAP_DAYS = 90
GAP_LIMIT = 200


def near_duplicates(chunks: Chunks) -> dict:
    """Groups (connected components) of chunks within DUPLICATE_COSINE of each other. Identical
    vectors are collapsed first; then each distinct vector links to those of its
    DUPLICATE_NEIGHBOURS nearest within the threshold, so memory stays linear in the chunks."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    x = chunks.vectors
    distinct, inverse = np.unique(np.round(x, 5), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    m = len(distinct)
    rows, cols = [], []
    if m > 1:
        neighbours = min(DUPLICATE_NEIGHBOURS, m - 1)
        distance, index = NearestNeighbors(n_neighbors=neighbours, metric="cosine").fit(distinct).kneighbors()
        near = distance <= 1 - DUPLICATE_COSINE + 1e-6
        rows = np.repeat(np.arange(m), neighbours)[near.ravel()]
        cols = index.ravel()[near.ravel()]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(m, m))
    _, component = connected_components(graph, directed=False)
    of_chunk = component[inverse]
    sizes = np.bincount(of_chunk)
    grouped = [c for c in np.flatnonzero(sizes >= 2)]
    grouped.sort(key=lambda c: (-sizes[c], c))
    groups = []
    for c in grouped[:LIST_CAP]:
        members = np.flatnonzero(of_chunk == c)
        groups.append(
            {
                "size": int(sizes[c]),
                "chunks": [chunks.ref(int(i), snippet=chunks.snippet(int(i))) for i in members[:GROUP_MEMBERS]],
            }
        )
    return {
        "groups": groups,
        "groups_total": len(grouped),
        "chunks_in_groups": int(sizes[grouped].sum()) if grouped else 0,
        "threshold": DUPLICATE_COSINE,
    }


def pca_report(x: np.ndarray, seed: int):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(x.shape), svd_solver="covariance_eigh", random_state=seed).fit(x)
    ratio = pca.explained_variance_ratio_
    cumulative = np.cumsum(ratio)

    def needed(share: float) -> int:
        return int(min(np.searchsorted(cumulative, share - 1e-9) + 1, len(ratio)))

    return pca, {
        "explained": [r(v) for v in ratio[:PCA_CURVE]],
        "cumulative": [r(v) for v in cumulative[:PCA_CURVE]],
        "components_90": needed(0.90),
        "components_95": needed(0.95),
    }


def intrinsic_dimension(x: np.ndarray, seed: int) -> float | None:
    """TwoNN (Facco, d'Errico, Rodriguez, Laio 2017): mu = r2 / r1 is Pareto with exponent d;
    d is the slope through the origin of -log(1 - F(mu)) against log(mu), the largest 10 % of
    the ratios left out. Identical vectors are counted once (r1 must be above zero)."""
    from sklearn.neighbors import NearestNeighbors

    distinct = np.unique(np.round(x, 5), axis=0)
    if len(distinct) > INTRINSIC_SAMPLE:
        rng = np.random.default_rng(seed)
        distinct = distinct[rng.choice(len(distinct), INTRINSIC_SAMPLE, replace=False)]
    if len(distinct) < 3:
        return None
    distance, _ = NearestNeighbors(n_neighbors=2).fit(distinct).kneighbors()
    r1, r2 = distance[:, 0], distance[:, 1]
    keep = r1 > 1e-9
    mu = np.sort(r2[keep] / r1[keep])
    if len(mu) < 3:
        return None
    n = len(mu)
    f = np.arange(1, n + 1) / n
    kept = slice(0, max(2, int(n * 0.9)))
    lx, ly = np.log(mu[kept]), -np.log(1 - f[kept])
    denominator = float(np.dot(lx, lx))
    return r(np.dot(lx, ly) / denominator, 2) if denominator > 0 else None


def projection_map(chatbot, space, chunks: Chunks, labels, centroids, pca, max_points: int, seed: int) -> dict:
    n = len(chunks.ids)
    picked = np.arange(n)
    if n > max_points:
        picked = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    xy = pca.transform(chunks.vectors[picked])[:, :2]
    points = [
        {"x": r(a), "y": r(b), "cluster": int(labels[i]), "chunk_id": chunks.ids[i]} for (a, b), i in zip(xy, picked)
    ]
    gaps = []
    found = gap_query_vectors(
        tenant=chatbot.tenant,
        chatbot_id=chatbot.pk,
        space_key=space.key,
        days=GAP_DAYS,
        low_score=settings.SEARCH_LOW_SCORE,
        limit=GAP_LIMIT,
    )
    usable = [(query, vector) for query, vector in found if len(vector) == chunks.vectors.shape[1]]
    if usable:
        vectors = unit(np.asarray([v for _, v in usable], dtype=np.float32))
        gxy = pca.transform(vectors)[:, :2]
        similarity = vectors @ centroids.T
        for (query, _), (a, b), sims in zip(usable, gxy, similarity):
            nearest = int(np.argmax(sims))
            gaps.append({"x": r(a), "y": r(b), "query": query[:200], "cluster": nearest, "cosine": r(sims[nearest])})
    return {"points": points, "gaps": gaps}
