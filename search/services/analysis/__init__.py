"""Vector analysis of a chatbot's embeddings: what its knowledge is about and how well it is
spread, read from the vectors search uses (scikit-learn and numpy over ``chunk_vectors``).

- **Topic clusters**: k-means over the unit vectors (so Euclidean k-means is cosine k-means), k
  chosen by the silhouette (cosine, on a sample) over a small range derived from the size; each
  cluster is labelled by the terms its chunk texts weigh more than the whole chatbot's (TF-IDF).
- **Outliers**: chunks much farther from their nearest centroid than the rest, by the modified
  z-score of Iglewicz and Hoaglin (median and MAD) of the log cosine distance, above 3.5.
- **Near-duplicates**: chunks within cosine 0.97 of each other, grouped by connected components.
- **PCA**: the explained-variance curve and the components needed for 90 % and 95 %; the
  **intrinsic dimension** by TwoNN (Facco et al., 2017): from the ratio of each point's second
  to first nearest-neighbour distance.
- **Map**: the first two principal components of a deterministic sample, with the chatbot's
  searched-but-unanswered queries (knowledge gaps, whose vectors the search log keeps) projected
  by the same PCA.

Runs as the caller's tenant (row-level security applies); every size is bounded.
"""

from search.services.analysis.clusters import k_candidates
from search.services.analysis.report import vector_analysis

__all__ = ["k_candidates", "vector_analysis"]
