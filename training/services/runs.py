"""What a claimed training job does, by type, between collecting its pairs and its version.

- ``fine_tune_run`` (``initial_training`` from the base model, ``incremental`` from the version
  serving now): hard negatives mined with the model, sentence-transformers' trainer, then the
  candidate's weights are evaluated on the held-out split over the whole corpus.
- ``adapter_run``: the serving space's stored document vectors stay frozen; queries are embedded
  once by the serving model, hard negatives are mined from the stored vectors, a low-rank query
  transform is learned (``training.services.adapter``) and evaluated on the same held-out split
  and the same stored vectors. Works for hosted models (OpenAI), whose weights cannot be tuned;
  deploying it re-embeds nothing.

Both report through ``Control`` (progress under the job's lease, cancel checks) and end in
``model_version_create``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from knowledge.chunking import embedding_text
from knowledge.embeddings import LocalProvider, provider_for, provider_for_space
from knowledge.models import Chunk, ChunkEmbedding, Document
from search.services import serving_for
from tenants.errors import DomainError
from tenants.models import Chatbot
from training.models import ModelVersion, TrainingJob
from training.services import adapter as adapters
from training.services import trainer
from training.services.data import PairSet, pair_texts
from training.services.versions import model_version_create

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


class _Reporter:
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


def _training_figures(pairs: int, epochs: float, seconds: float, negatives: int) -> dict:
    return {
        "pairs": pairs,
        "seconds": round(seconds, 1),
        "pairs_per_minute": round(pairs * epochs / max(seconds, 1e-6) * 60, 1),
        "hard_negatives": negatives,
    }


def fine_tune_run(job: TrainingJob, config: dict, control: Control) -> Outcome:
    chatbot = job.chatbot
    train = pair_texts(chatbot=chatbot, split="train", sources=config.get("sources"), limit=config["max_pairs"])
    heldout = pair_texts(chatbot=chatbot, split="heldout")
    active_space = serving_for(chatbot).space
    active_provider = provider_for_space(active_space)  # queries as search embeds them now
    weights = provider_for_space(active_space.store)  # the serving weights (under an adapter, its store's)
    if not isinstance(weights, LocalProvider):
        raise DomainError(f"{active_space.key} cannot be fine-tuned; an adapter job can tune its queries.")
    control.beat(stage=Stage.MINING, progress=5)
    # initial training starts from the base model, incremental from the weights serving now
    start = weights if job.job_type == TrainingJob.Type.INCREMENTAL else provider_for(active_space.model_key)
    model = trainer.load_model(str(start.weights))
    corpus_ids, corpus_texts = _corpus(chatbot)
    negatives = list(train.negatives)
    if config["hard_negatives"]:
        mined = trainer.hard_negatives_mine(
            model, anchors=train.anchors, positives=train.positives, corpus=corpus_texts
        )
        negatives = [given or found for given, found in zip(negatives, mined)]
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.TRAINING, progress=10)
    report = _Reporter(control, low=10, high=80)
    workdir = Path(tempfile.mkdtemp(prefix=f"train-{job.pk}-", dir=_scratch()))
    try:
        trainer.fine_tune(
            model,
            anchors=train.anchors,
            positives=train.positives,
            negatives=negatives if any(n is not None for n in negatives) else None,
            batch_size=config["batch_size"],
            epochs=config["num_epochs"],
            learning_rate=config["learning_rate"],
            warmup_ratio=config["warmup_ratio"],
            seed=config["seed"],
            output_dir=str(workdir / "checkpoints"),
            on_progress=report,
        )
        seconds = time.monotonic() - report.began
        control.beat(stage=Stage.EVALUATING, progress=82, loss=list(report.losses))
        held = _heldout_queries(heldout)
        active_corpus = _stored_vectors(chatbot, active_space, corpus_ids)
        if active_corpus is None:
            active_corpus = _as_array(weights.embed(corpus_texts))
        metrics = evaluate(
            held,
            corpus_ids,
            candidate=(trainer.encode(model, held.texts), trainer.encode(model, corpus_texts)),
            active=(_as_array(active_provider.embed(held.texts)), active_corpus),
            seed=config["seed"],
            previous=_previous_version(chatbot),
        )
        metrics["active_space"] = active_space.key
        metrics["training"] = _training_figures(
            len(train.anchors), config["num_epochs"], seconds, sum(n is not None for n in negatives)
        )
        if control.cancelled():
            raise trainer.Cancelled()
        control.beat(stage=Stage.SAVING, progress=92)
        version = model_version_create(job=job, metrics=metrics, save=lambda folder: model.save(str(folder)),
                                       workdir=workdir)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(version, metrics, report.losses)


def adapter_run(job: TrainingJob, config: dict, control: Control) -> Outcome:
    chatbot = job.chatbot
    train = pair_texts(chatbot=chatbot, split="train", sources=config.get("sources"), limit=config["max_pairs"])
    heldout = pair_texts(chatbot=chatbot, split="heldout")
    active_space = serving_for(chatbot).space
    store = active_space.store
    base = provider_for_space(store)  # queries as the store's documents were embedded
    control.beat(stage=Stage.MINING, progress=5)
    corpus_ids, corpus_texts = _corpus(chatbot)
    corpus = _stored_vectors(chatbot, store, corpus_ids)
    if corpus is None:
        raise DomainError(
            "Some chunks have no vector in the serving space yet (documents still being processed); "
            "start the adapter job when ingestion is done."
        )
    row_of = {chunk_id: i for i, chunk_id in enumerate(corpus_ids)}
    queries = _as_array(base.embed(train.anchors))
    positives = _pair_vectors(train.chunk_ids, train.positives, corpus, row_of, base)
    negative_rows = _given_negatives(train, corpus_texts, row_of)
    if config["hard_negatives"]:
        mined = adapters.hard_negatives_from_vectors(
            queries, positives, train.chunk_ids, corpus, corpus_ids,
            skip=settings.TRAINING_NEGATIVE_SKIP_RANKS, margin=settings.TRAINING_NEGATIVE_MARGIN,
        )  # fmt: skip
        negative_rows = [given if given is not None else found for given, found in zip(negative_rows, mined)]
    negatives = _negative_vectors(negative_rows, corpus, positives, seed=config["seed"])
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.TRAINING, progress=10)
    report = _Reporter(control, low=10, high=80)
    learned = adapters.train_adapter(
        queries=queries,
        positives=positives,
        negatives=negatives,
        positive_keys=[f"chunk:{c}" if c is not None else t for c, t in zip(train.chunk_ids, train.positives)],
        rank=config["adapter_rank"],
        batch_size=config["batch_size"],
        epochs=config["num_epochs"],
        learning_rate=config["learning_rate"],
        warmup_ratio=config["warmup_ratio"],
        seed=config["seed"],
        on_progress=report,
    )
    seconds = time.monotonic() - report.began
    control.beat(stage=Stage.EVALUATING, progress=82, loss=list(report.losses))
    held = _heldout_queries(heldout)
    base_queries = _as_array(base.embed(held.texts))
    active_queries = (
        base_queries if active_space.pk == store.pk else _as_array(provider_for_space(active_space).embed(held.texts))
    )
    metrics = evaluate(held, corpus_ids, candidate=(learned.apply(base_queries), corpus),
                       active=(active_queries, corpus), seed=config["seed"],
                       previous=_previous_version(chatbot))  # fmt: skip
    metrics["active_space"] = active_space.key
    metrics["adapter"] = {"rank": learned.rank, "dimensions": learned.dimensions, "vectors_of": store.key}
    metrics["training"] = _training_figures(
        len(train.anchors), config["num_epochs"], seconds, sum(r is not None for r in negative_rows)
    )
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.SAVING, progress=92)
    workdir = Path(tempfile.mkdtemp(prefix=f"adapter-{job.pk}-", dir=_scratch()))
    try:
        version = model_version_create(
            job=job,
            metrics=metrics,
            save=lambda folder: learned.save(folder, vectors_of=store.key),
            workdir=workdir,
            vectors_from=store,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(version, metrics, report.losses)


def _as_array(vectors) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float32)


def _pair_vectors(chunk_ids, texts, corpus, row_of, provider) -> np.ndarray:
    """Each pair's positive: its chunk's stored vector, or its text embedded (a text answer)."""
    out = np.zeros((len(texts), corpus.shape[1]), dtype=np.float32)
    loose = [i for i, c in enumerate(chunk_ids) if c not in row_of]
    for i, c in enumerate(chunk_ids):
        if c in row_of:
            out[i] = corpus[row_of[c]]
    if loose:
        out[loose] = _as_array(provider.embed([texts[i] for i in loose]))
    return out


def _negative_vectors(rows: list[int | None], corpus, positives, *, seed: int) -> np.ndarray | None:
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


def _given_negatives(train: PairSet, corpus_texts: list[str], row_of: dict) -> list[int | None]:
    """Negatives a pair names (feedback, an upload) that are chunks of the corpus, as rows."""
    by_text = {text: row for row, text in enumerate(corpus_texts)}
    return [by_text.get(n) if n is not None else None for n in train.negatives]


@dataclass
class HeldOut:
    texts: list[str]
    relevant: list[set]
    sources: np.ndarray
    created: np.ndarray  # when each question was first held out (epoch seconds)


def _heldout_queries(heldout: PairSet) -> HeldOut:
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


def _previous_version(chatbot: Chatbot) -> ModelVersion | None:
    return ModelVersion.objects.filter(chatbot=chatbot).order_by("-number").first()


def _corpus(chatbot: Chatbot) -> tuple[list[int], list[str]]:
    rows = (
        Chunk.objects.filter(chatbot=chatbot, document__status=Document.Status.READY)
        .order_by("id")
        .values_list("id", "text", "context")
    )
    ids, texts = [], []
    for chunk_id, text, context in rows:
        ids.append(chunk_id)
        texts.append(embedding_text(text, context))
    return ids, texts


def _stored_vectors(chatbot: Chatbot, space, ids: list[int]) -> np.ndarray | None:
    """The stored vectors of ``ids`` in ``space`` (its store), in order; None if any is missing."""
    found = dict(
        ChunkEmbedding.objects.filter(chatbot=chatbot, space=space.store, chunk_id__in=ids).values_list(
            "chunk_id", "embedding"
        )
    )
    return np.asarray([found[i] for i in ids], dtype=np.float32) if len(found) == len(ids) else None


def _scratch() -> str:
    path = Path(settings.TRAINING_ARTIFACTS_DIR).parent / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
