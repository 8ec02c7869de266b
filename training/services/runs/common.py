"""What every training run shares: progress and cancel checks under the job's lease
(``Control``, ``Reporter``), the chatbot's corpus and its stored vectors, the held-out questions
and the evaluation that feeds the gate (candidate and active version over the same corpus)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from tenants.errors import DomainError
from tenants.models import Chatbot
from training.models import ModelVersion, TrainingJob
from training.selectors import training_corpus, training_corpus_vectors
from training.services import trainer
from training.services.data import PairSet

logger = logging.getLogger(__name__)

Stage = TrainingJob.Stage
LOSS_POINTS = 300  # loss values kept per job for the chart


@dataclass
class Control:
    beat: Callable[..., None]  # progress fields, written under the lease
    cancelled: Callable[[], bool]


@dataclass
class Outcome:
    version: ModelVersion
    metrics: dict
    losses: list


class Reporter:
    """Turns trainer progress into job rows: at most one write a second, a thinned loss series,
    and a cancel check with every write."""

    def __init__(self, control: Control, *, low: int, high: int):
        self.control, self.low, self.high = control, low, high
        self.began = time.monotonic()
        self.losses: list = []
        self.last = 0.0

    def __call__(self, p: trainer.Progress) -> bool:
        every = max(1, p.total // LOSS_POINTS)
        if p.loss is not None and (p.step % every == 0 or p.step >= p.total):
            self.losses.append([p.step, round(p.loss, 5)])
        now = time.monotonic()
        if now - self.last < 1.0 and p.step < p.total:
            return True
        self.last = now
        rate = (now - self.began) / max(p.step, 1)
        self.control.beat(
            step=p.step,
            total_steps=p.total,
            epoch=round(p.epoch, 3),
            loss=list(self.losses),
            progress=self.low + int((self.high - self.low) * p.step / max(p.total, 1)),
            eta_seconds=int(rate * max(p.total - p.step, 0)),
        )
        return not self.control.cancelled()


def training_figures(pairs: int, epochs: float, seconds: float, negatives: int) -> dict:
    return {
        "pairs": pairs,
        "seconds": round(seconds, 1),
        "pairs_per_minute": round(pairs * epochs / max(seconds, 1e-6) * 60, 1),
        "hard_negatives": negatives,
    }


def as_array(vectors) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float32)


def pair_vectors(chunk_ids, texts, corpus, row_of, provider) -> np.ndarray:
    """Each pair's positive: its chunk's stored vector, or its text embedded (a text answer)."""
    out = np.zeros((len(texts), corpus.shape[1]), dtype=np.float32)
    loose = [i for i, c in enumerate(chunk_ids) if c not in row_of]
    for i, c in enumerate(chunk_ids):
        if c in row_of:
            out[i] = corpus[row_of[c]]
    if loose:
        out[loose] = as_array(provider.embed([texts[i] for i in loose]))
    return out


def negative_vectors(rows: list[int | None], corpus, positives, *, seed: int) -> np.ndarray | None:
    """Each pair's negative: its corpus row, or for a pair without one another pair's positive
    (an easy negative: no pair is dropped); None when no pair has a negative at all."""
    if all(r is None for r in rows):
        return None
    rng = np.random.default_rng(seed)
    n = len(positives)
    out = np.empty_like(positives)
    for i, row in enumerate(rows):
        out[i] = corpus[row] if row is not None else positives[(i + 1 + rng.integers(max(n - 1, 1))) % n]
    return out


def given_negatives(train: PairSet, corpus_texts: list[str], row_of: dict) -> list[int | None]:
    """Negatives a pair names (feedback, an upload) that are chunks of the corpus, as rows."""
    by_text = {text: row for row, text in enumerate(corpus_texts)}
    return [by_text.get(n) if n is not None else None for n in train.negatives]


@dataclass
class HeldOut:
    texts: list[str]
    relevant: list[set]
    sources: np.ndarray
    created: np.ndarray  # when each question was first held out (epoch seconds)


def heldout_queries(heldout: PairSet) -> HeldOut:
    queries: dict[str, dict] = {}
    for query, chunk_id, source, created in zip(
        heldout.anchors, heldout.chunk_ids, heldout.sources, heldout.created, strict=True
    ):
        if chunk_id is None:
            continue
        entry = queries.setdefault(
            " ".join(query.casefold().split()),
            {"query": query, "relevant": set(), "source": source, "created": created.timestamp()},
        )
        entry["relevant"].add(chunk_id)
        entry["created"] = min(entry["created"], created.timestamp())
    if len(queries) < settings.TRAINING_MIN_HELDOUT:
        raise DomainError(
            f"Only {len(queries)} held-out questions point at a chunk; at least {settings.TRAINING_MIN_HELDOUT} "
            "are needed to judge a version. Add more FAQ rows, chat logs or pairs with chunk_id."
        )
    return HeldOut(
        texts=[q["query"] for q in queries.values()],
        relevant=[q["relevant"] for q in queries.values()],
        sources=np.asarray([q["source"] for q in queries.values()]),
        created=np.asarray([q["created"] for q in queries.values()], dtype=float),
    )


def evaluate(
    held: HeldOut, corpus_ids: list[int], *, candidate: tuple, active: tuple, seed: int, previous=None
) -> dict:
    """Candidate and active version on the held-out queries over the whole corpus (each a pair of
    query vectors and corpus vectors), overall and per source; the gate's inputs (paired bootstrap
    of nDCG@10). With ``previous`` (the chatbot's latest earlier version), ``comparable`` splits
    the held-out questions into those that judged that version too and those new since, so runs
    compare on the same questions (a held-out question stays held out)."""
    cand = trainer.rank(candidate[0], candidate[1], corpus_ids, held.relevant)
    act = trainer.rank(active[0], active[1], corpus_ids, held.relevant)
    per_source = {}
    for source in sorted(set(held.sources.tolist())):
        mask = held.sources == source
        per_source[source] = {"candidate": cand.summary(mask), "active": act.summary(mask)}
    metrics = {
        "candidate": cand.summary(),
        "active": act.summary(),
        "per_source": per_source,
        "bootstrap": trainer.paired_bootstrap(cand.ndcg, act.ndcg, seed=seed),
        "corpus_chunks": len(corpus_ids),
    }
    if previous is not None:
        old = held.created <= previous.created_at.timestamp()
        metrics["comparable"] = {
            "previous_version": previous.number,
            "previous_questions": {"candidate": cand.summary(old), "active": act.summary(old)},
            "new_questions": {"candidate": cand.summary(~old), "active": act.summary(~old)},
        }
    return metrics


def previous_version(chatbot: Chatbot) -> ModelVersion | None:
    return ModelVersion.objects.filter(chatbot=chatbot).order_by("-number").first()


def corpus_of(chatbot: Chatbot) -> tuple[list[int], list[str]]:
    """(chunk ids, texts as the index embeds them) of the chatbot's ready chunks, in id order."""
    return training_corpus(chatbot=chatbot)


def stored_vectors(chatbot: Chatbot, space, ids: list[int]) -> np.ndarray | None:
    """The stored vectors of ``ids`` in ``space`` (its store), in order; None if any is missing."""
    return training_corpus_vectors(chatbot=chatbot, space=space, ids=ids)


def scratch_dir() -> str:
    path = Path(settings.TRAINING_ARTIFACTS_DIR).parent / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
