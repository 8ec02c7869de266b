"""Topic clusters (k-means, k by silhouette, TF-IDF labels) and outliers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from search.services.analysis.data import Chunks, r, unit

MAX_K = 40
MAX_CANDIDATES = 12  # values of k tried
SELECTION_SAMPLE = 5_000  # k is chosen on at most this many points
SILHOUETTE_SAMPLE = 2_000
NO_STRUCTURE = 0.02  # best silhouette below it: the size rule picks k
OUTLIER_Z = 3.5
LIST_CAP = 50
EXAMPLES = 3

Progress = Callable[[int, str], None]


def k_candidates(n: int) -> list[int]:
    """2 up to min(MAX_K, sqrt(n/2)), at most MAX_CANDIDATES values, evenly stepped."""
    high = max(2, min(MAX_K, int(math.sqrt(n / 2)), n - 1))
    step = max(1, math.ceil((high - 1) / MAX_CANDIDATES))
    values = list(range(2, high + 1, step))
    return values if values[-1] == high else [*values, high]


def _kmeans(k: int, n: int, seed: int):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n <= SELECTION_SAMPLE:
        return KMeans(n_clusters=k, n_init=3, random_state=seed)
    return MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=2048)


def topic_clusters(x: np.ndarray, seed: int, tell: Progress):
    """(k, silhouette, how k was chosen, labels, unit centroids): k by the best silhouette over
    ``k_candidates`` (on a sample for big chatbots), else by the size rule when no k shows any
    structure; then k-means with that k over every point."""
    from sklearn.metrics import silhouette_score

    n = len(x)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, SELECTION_SAMPLE, replace=False)) if n > SELECTION_SAMPLE else np.arange(n)
    xs = x[sample]
    candidates = k_candidates(n)
    scores: dict[int, float] = {}
    fitted = {}
    for i, k in enumerate(candidates):
        model = _kmeans(k, len(xs), seed).fit(xs)
        if len(set(model.labels_)) < 2:
            continue
        scores[k] = float(
            silhouette_score(
                xs, model.labels_, metric="cosine", sample_size=min(SILHOUETTE_SAMPLE, len(xs)), random_state=seed
            )
        )
        fitted[k] = model
        tell(10 + int(45 * (i + 1) / len(candidates)), "clustering")
    if scores and max(scores.values()) >= NO_STRUCTURE:
        k = max(scores, key=lambda c: (scores[c], -c))
        method = "silhouette"
    else:
        k = max(2, min(MAX_K, round(math.sqrt(n / 2)), n - 1))
        method = "size rule"
    model = fitted.get(k) if n == len(xs) else None
    if model is None:
        model = _kmeans(k, n, seed).fit(x)
    labels = model.labels_.astype(int)
    if method == "size rule" or n != len(xs):
        score = silhouette_score(x, labels, metric="cosine", sample_size=min(SILHOUETTE_SAMPLE, n), random_state=seed)
    else:
        score = scores[k]
    return k, r(score), method, labels, unit(model.cluster_centers_.astype(np.float32))


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
