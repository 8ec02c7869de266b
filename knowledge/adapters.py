"""Query adapters: a small learned transform of query vectors over frozen document vectors.

An adapter space (``EmbeddingSpace.vectors_from`` set) serves searches with its store's document
vectors unchanged and moves each query vector by a low-rank residual,
``q' = normalise(q + (q @ down) @ up)``: the one way to tune retrieval for a hosted model that
cannot be fine-tuned, deployed without re-embedding a single chunk. The training app learns
``down`` and ``up``; this module owns the artifact's format and applies it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILE = "adapter.npz"
META = "adapter.json"


class QueryAdapter:
    def __init__(self, down: np.ndarray, up: np.ndarray):
        down = np.asarray(down, dtype=np.float32)
        up = np.asarray(up, dtype=np.float32)
        if down.ndim != 2 or up.ndim != 2 or down.shape[1] != up.shape[0] or down.shape[0] != up.shape[1]:
            raise ValueError(f"adapter matrices do not fit: {down.shape} and {up.shape}")
        self.down, self.up = down, up

    @property
    def dimensions(self) -> int:
        return int(self.down.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def apply(self, vectors) -> np.ndarray:
        """Adapted, unit-length query vectors (rows)."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            return self.apply(q[None, :])[0]
        out = q + (q @ self.down) @ self.up
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def save(self, folder: Path, **meta) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / FILE, down=self.down, up=self.up)
        (folder / META).write_text(json.dumps({"rank": self.rank, "dimensions": self.dimensions, **meta}))

    @classmethod
    def load(cls, folder: Path) -> QueryAdapter:
        with np.load(Path(folder) / FILE, allow_pickle=False) as data:
            return cls(data["down"], data["up"])


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / FILE).is_file()
