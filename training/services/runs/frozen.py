"""Runs over the serving space's stored document vectors, which stay frozen: deploying what they
make re-embeds nothing (the version's space reads its store's vectors).

- ``query_encoder_run`` (the default job for a local model): the query encoder itself, from the
  weights serving queries now, against every stored chunk vector
  (``training.services.query_encoder``). No mining pass: the whole corpus is each query's negatives.
- ``adapter_run``: queries embedded once by the store's model, hard negatives mined from the
  stored vectors, a low-rank query transform learned (``training.services.adapter``). Works for
  hosted models (OpenAI), whose weights cannot be tuned.

Both read the corpus, the pairs' positives and the held-out split from the stored vectors once
(``_frozen``), and evaluate candidate and active version on the same stored vectors.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from knowledge.embeddings import EmbeddingProvider, LocalProvider, provider_for_space
from knowledge.models import EmbeddingSpace
from search.services import serving_for
from tenants.errors import DomainError
from training.models import TrainingJob
from training.services import adapter as adapters
from training.services import query_encoder, trainer
from training.services.data import PairSet, pair_texts
from training.services.runs.common import (
    Control,
    HeldOut,
    Outcome,
    Reporter,
    Stage,
    as_array,
    corpus_of,
    evaluate,
    given_negatives,
    heldout_queries,
    negative_vectors,
    pair_vectors,
    previous_version,
    scratch_dir,
    stored_vectors,
    training_figures,
)
from training.services.versions import model_version_create


@dataclass
class _Inputs:
    train: PairSet
    held: HeldOut
    active_space: EmbeddingSpace
    store: EmbeddingSpace
    base: EmbeddingProvider  # queries and text answers as the store's documents were embedded
    corpus_ids: list[int]
    corpus_texts: list[str]
    corpus: np.ndarray  # the store's vectors of corpus_ids, in order
    row_of: dict[int, int]


def _frozen(job: TrainingJob, config: dict, kind: str) -> _Inputs:
    chatbot = job.chatbot
    train = pair_texts(chatbot=chatbot, split="train", sources=config.get("sources"), limit=config["max_pairs"])
    held = heldout_queries(pair_texts(chatbot=chatbot, split="heldout"))  # refused before any training
    active_space = serving_for(chatbot).space
    store = active_space.store
    corpus_ids, corpus_texts = corpus_of(chatbot)
    corpus = stored_vectors(chatbot, store, corpus_ids)
    if corpus is None:
        raise DomainError(
            "Some chunks have no vector in the serving space yet (documents still being processed); "
            f"start the {kind} job when ingestion is done."
        )
    row_of = {chunk_id: i for i, chunk_id in enumerate(corpus_ids)}
    return _Inputs(train, held, active_space, store, provider_for_space(store), corpus_ids, corpus_texts, corpus,
                   row_of)  # fmt: skip


def _optimisation(config: dict) -> dict:
    """The job's optimisation settings as both trainers over frozen vectors take them."""
    return {
        "batch_size": config["batch_size"],
        "epochs": config["num_epochs"],
        "learning_rate": config["learning_rate"],
        "warmup_ratio": config["warmup_ratio"],
        "seed": config["seed"],
    }


def _save(job: TrainingJob, metrics: dict, save, store: EmbeddingSpace, prefix: str):
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{job.pk}-", dir=scratch_dir()))
    try:
        return model_version_create(job=job, metrics=metrics, save=save, workdir=workdir, vectors_from=store)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _active_queries(data: _Inputs, texts: list[str]) -> np.ndarray:
    return as_array(provider_for_space(data.active_space).embed(texts))


def query_encoder_run(job: TrainingJob, config: dict, control: Control) -> Outcome:
    data = _frozen(job, config, "query encoder")
    start, started_from = provider_for_space(data.active_space), data.active_space
    if not isinstance(start, LocalProvider):  # an adapter serving: its store's weights
        start, started_from = data.base, data.store
    if not isinstance(start, LocalProvider):
        raise DomainError(f"{data.store.key} is a hosted model whose weights cannot be tuned; an adapter job can.")
    control.beat(stage=Stage.MINING, progress=5)
    train = data.train
    candidates, targets, masked = _contrast(train, data)
    model = trainer.load_model(str(start.weights))
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.TRAINING, progress=10)
    report = Reporter(control, low=10, high=80)
    query_encoder.train_query_encoder(
        model,
        anchors=train.anchors,
        candidates=candidates,
        targets=targets,
        masked=masked,
        on_progress=report,
        **_optimisation(config),
    )
    seconds = time.monotonic() - report.began
    control.beat(stage=Stage.EVALUATING, progress=82, loss=list(report.losses))
    held = data.held
    metrics = evaluate(held, data.corpus_ids, candidate=(trainer.encode(model, held.texts), data.corpus),
                       active=(_active_queries(data, held.texts), data.corpus), seed=config["seed"],
                       previous=previous_version(job.chatbot))  # fmt: skip
    metrics["active_space"] = data.active_space.key
    metrics["query_encoder"] = {"vectors_of": data.store.key, "started_from": started_from.key, "negatives": "corpus"}
    metrics["training"] = training_figures(len(train.anchors), config["num_epochs"], seconds, len(candidates) - 1)
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.SAVING, progress=92)
    version = _save(job, metrics, lambda folder: model.save(str(folder)), data.store, "query")
    return Outcome(version, metrics, report.losses)


def _contrast(train: PairSet, data: _Inputs) -> tuple[np.ndarray, list[int], list[list[int]]]:
    """What each query is ranked against: every stored chunk vector, then the answers and negatives
    given as text that are no chunk's (embedded once by the store's model). Each pair's target row,
    and the rows masked for it: the same question's other answers and every row with the text of
    one of its answers (a duplicated chunk is no negative)."""
    rows_of_text: dict[str, list[int]] = {}
    for row, text in enumerate(data.corpus_texts):
        rows_of_text.setdefault(text, []).append(row)
    loose = [text for c, text in zip(train.chunk_ids, train.positives) if c not in data.row_of]
    extra = list(dict.fromkeys(t for t in [*loose, *(n for n in train.negatives if n)] if t not in rows_of_text))
    for i, text in enumerate(extra):
        rows_of_text[text] = [len(data.corpus_texts) + i]
    candidates = np.vstack([data.corpus, as_array(data.base.embed(extra))]) if extra else data.corpus
    targets = [data.row_of[c] if c in data.row_of else rows_of_text[t][0] for c, t in
               zip(train.chunk_ids, train.positives)]  # fmt: skip
    answers: dict[str, set[int]] = {}
    for anchor, target, text in zip(train.anchors, targets, train.positives):
        answers.setdefault(_question(anchor), set()).update([target, *rows_of_text.get(text, [])])
    masked = [sorted(answers[_question(anchor)] - {target}) for anchor, target in zip(train.anchors, targets)]
    return candidates, targets, masked


def _question(text: str) -> str:
    return " ".join(text.casefold().split())


def adapter_run(job: TrainingJob, config: dict, control: Control) -> Outcome:
    data = _frozen(job, config, "adapter")
    train, corpus, store, base = data.train, data.corpus, data.store, data.base
    control.beat(stage=Stage.MINING, progress=5)
    queries = as_array(base.embed(train.anchors))
    positives = pair_vectors(train.chunk_ids, train.positives, corpus, data.row_of, base)
    negative_rows = given_negatives(train, data.corpus_texts, data.row_of)
    if config["hard_negatives"]:
        mined = adapters.hard_negatives_from_vectors(
            queries, positives, train.chunk_ids, corpus, data.corpus_ids,
            skip=settings.TRAINING_NEGATIVE_SKIP_RANKS, margin=settings.TRAINING_NEGATIVE_MARGIN,
        )  # fmt: skip
        negative_rows = [given if given is not None else found for given, found in zip(negative_rows, mined)]
    negatives = negative_vectors(negative_rows, corpus, positives, seed=config["seed"])
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.TRAINING, progress=10)
    report = Reporter(control, low=10, high=80)
    learned = adapters.train_adapter(
        queries=queries,
        positives=positives,
        negatives=negatives,
        positive_keys=[f"chunk:{c}" if c is not None else t for c, t in zip(train.chunk_ids, train.positives)],
        rank=config["adapter_rank"],
        on_progress=report,
        **_optimisation(config),
    )
    seconds = time.monotonic() - report.began
    control.beat(stage=Stage.EVALUATING, progress=82, loss=list(report.losses))
    held = data.held
    base_queries = as_array(base.embed(held.texts))
    active_queries = base_queries if data.active_space.pk == store.pk else _active_queries(data, held.texts)
    metrics = evaluate(held, data.corpus_ids, candidate=(learned.apply(base_queries), corpus),
                       active=(active_queries, corpus), seed=config["seed"],
                       previous=previous_version(job.chatbot))  # fmt: skip
    metrics["active_space"] = data.active_space.key
    metrics["adapter"] = {"rank": learned.rank, "dimensions": learned.dimensions, "vectors_of": store.key}
    metrics["training"] = training_figures(
        len(train.anchors), config["num_epochs"], seconds, sum(r is not None for r in negative_rows)
    )
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.SAVING, progress=92)
    version = _save(job, metrics, lambda folder: learned.save(folder, vectors_of=store.key), store, "adapter")
    return Outcome(version, metrics, report.losses)
