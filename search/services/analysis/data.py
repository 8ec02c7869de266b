"""The chunks read for an analysis, as arrays, and small helpers."""

from __future__ import annotations

import numpy as np

SNIPPET = 160


class Chunks:
    """The rows read, as arrays; the vectors scaled to unit length."""

    def __init__(self, rows):
        self.ids = [int(r[0]) for r in rows]
        self.document_ids = [int(r[1]) for r in rows]
        self.titles = [r[2] or "" for r in rows]
        self.texts = [r[3] or "" for r in rows]
        self.vectors = unit(np.asarray([r[4] for r in rows], dtype=np.float32))

    def ref(self, i: int, **extra) -> dict:
        return {"chunk_id": self.ids[i], "document_id": self.document_ids[i], "title": self.titles[i][:200], **extra}

    def snippet(self, i: int) -> str:
        text = " ".join(self.texts[i].split())
        return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def r(value, digits: int = 4):
    return None if value is None else round(float(value), digits)
