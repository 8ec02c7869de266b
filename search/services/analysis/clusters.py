"""Topic clusters (k-means, k by silhouette, TF-IDF labels) and outliers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from search.services.analysis.data import Chunks, r, unit

MAX_K = 40
MAX_CANDIDATES = 12  # values of k tried
SELECTION_SAMPLE = 4_000  # k is chosen on at most this many points
CLUSTER_COMPONENTS = 64  # past REDUCE_ABOVE chunks, k-means runs on this many principal components
REDUCE_ABOVE = 2_000
SILHOUETTE_SAMPLE = 2_000
NO_STRUCTURE = 0.02  # best silhouette below it: the size rule picks k
OUTLIER_Z = 3.5
LIST_CAP = 50
EXAMPLES = 3

Progress = Callable[[int, str], None]


def k_candidates(n: int) -> list[int]:
    """Every k from 2 to 6, then geometrically spaced up to min(MAX_K, sqrt(n/2)): at most
    MAX_CANDIDATES values, as fine where a few topics differ as where many do."""
    high = max(2, min(MAX_K, int(math.sqrt(n / 2)), n - 1))
    values = list(range(2, min(high, 6) + 1))
    if high > 6:
        values += [int(round(v)) for v in np.geomspace(6, high, MAX_CANDIDATES - 4)[1:]]
    return sorted(set(values))


def _kmeans(k: int, n: int, seed: int):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n <= SELECTION_SAMPLE:
        return KMeans(n_clusters=k, n_init=2, random_state=seed)
    return MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=2048)


def topic_clusters(x: np.ndarray, reduced: np.ndarray, seed: int, tell: Progress):
    """(k, silhouette, how k was chosen, labels, unit centroids). k-means runs on ``reduced``
    (the vectors, or for big chatbots their first principal components: about as good clusters
    at a fraction of the cost); the silhouette (cosine) and the centroids are of the vectors.
    k is the best silhouette's over ``k_candidates`` (chosen on a sample for big chatbots), else
    the size rule when no k shows any structure; then k-means with that k over every point."""
    n = len(x)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, SELECTION_SAMPLE, replace=False)) if n > SELECTION_SAMPLE else np.arange(n)
    candidates = k_candidates(n)
    scores: dict[int, float] = {}
    fitted = {}
    for i, k in enumerate(candidates):
        model = _kmeans(k, len(sample), seed).fit(reduced[sample])
        if len(set(model.labels_)) >= 2:
            scores[k] = _silhouette(x[sample], model.labels_, seed)
            fitted[k] = model
        tell(10 + int(45 * (i + 1) / len(candidates)), "clustering")
    if scores and max(scores.values()) >= NO_STRUCTURE:
        k = max(scores, key=lambda c: (scores[c], -c))
        method = "silhouette"
    else:
        k = max(2, min(MAX_K, round(math.sqrt(n / 2)), n - 1))
        method = "size rule"
    if n == len(sample) and k in fitted:
        labels, score = fitted[k].labels_.astype(int), scores[k]
    else:
        labels = _kmeans(k, n, seed).fit(reduced).labels_.astype(int)
        score = _silhouette(x, labels, seed)
    centroids = np.stack([x[labels == c].sum(axis=0) for c in range(k)]).astype(np.float32)
    return k, r(score), method, labels, unit(centroids)


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels)) < 2:
        return 0.0
    size = min(SILHOUETTE_SAMPLE, len(x))
    return float(silhouette_score(x, labels, metric="cosine", sample_size=size, random_state=seed))


def _top_terms(texts: list[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Per cluster, up to 5 terms its texts weigh more (mean TF-IDF) than all the chatbot's."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        stop_words="english",
        token_pattern=r"(?u)\b[^\W\d_]{2,}\b",
        sublinear_tf=True,
        max_features=20_000,
        min_df=2 if len(texts) >= 50 else 1,
        max_df=0.9 if len(texts) >= 50 else 1.0,
    )
    try:
        weights = vectorizer.fit_transform(texts)
    except ValueError:  # no words at all (numbers, symbols)
        return [[] for _ in range(k)]
    terms = vectorizer.get_feature_names_out()
    overall = np.asarray(weights.mean(axis=0)).ravel()
    out = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if not len(members):
            out.append([])
            continue
        inside = np.asarray(weights[members].mean(axis=0)).ravel()
        lift = inside - overall
        best = [j for j in np.argsort(-lift)[:5] if lift[j] > 0 and inside[j] > 0]
        out.append([str(terms[j]) for j in best])
    return out


def describe_clusters(chunks: Chunks, labels: np.ndarray, centroids: np.ndarray, similarity: np.ndarray) -> list:
    k = len(centroids)
    terms = _top_terms(chunks.texts, labels, k)
    clusters = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if not len(members):
            continue
        own = similarity[members, cluster]
        nearest = members[np.argsort(-own)[:EXAMPLES]]
        clusters.append(
            {
                "id": cluster,
                "size": len(members),
                "label": ", ".join(terms[cluster][:3]) or f"cluster {cluster}",
                "terms": terms[cluster],
                "cohesion": r(own.mean()),
                "examples": [chunks.ref(int(i)) for i in nearest],
            }
        )
    return sorted(clusters, key=lambda c: (-c["size"], c["id"]))


def find_outliers(chunks: Chunks, labels: np.ndarray, similarity: np.ndarray) -> tuple[list, int]:
    """Chunks far from their nearest centroid: the modified z-score (Iglewicz and Hoaglin:
    0.6745 (v - median) / MAD) of the log cosine distance above OUTLIER_Z, farthest first. On the
    log scale the skewed distances of a cluster's members are near symmetric, so a long tail of
    ordinary members is not flagged while a chunk of no topic is."""
    best = similarity.max(axis=1)
    distance = np.log(np.maximum(1.0 - best, 1e-6))
    median = float(np.median(distance))
    mad = max(float(np.median(np.abs(distance - median))), 1e-6)
    z = 0.6745 * (distance - median) / mad
    found = np.flatnonzero(z > OUTLIER_Z)
    found = found[np.argsort(best[found])]
    listed = [
        chunks.ref(
            int(i),
            snippet=chunks.snippet(int(i)),
            cluster=int(labels[i]),
            cosine=r(best[i]),
            distance=r(1 - best[i]),
            z=r(z[i], 2),
        )
        for i in found[:LIST_CAP]
    ]
    return listed, len(found)
