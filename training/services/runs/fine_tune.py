"""``fine_tune_run``: both towers trained (``initial_training`` from the base model,
``incremental`` from the weights serving now): hard negatives mined with the model,
sentence-transformers' trainer, then the candidate's weights evaluated on the held-out split over
the whole corpus, which it re-embeds (and deploying it re-embeds every chunk)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from knowledge.embeddings import LocalProvider, provider_for, provider_for_space
from search.services import serving_for
from tenants.errors import DomainError
from training.models import TrainingJob
from training.services import trainer
from training.services.data import pair_texts
from training.services.runs.common import (
    Control,
    Outcome,
    Reporter,
    Stage,
    as_array,
    corpus_of,
    evaluate,
    heldout_queries,
    previous_version,
    scratch_dir,
    stored_vectors,
    training_figures,
)
from training.services.versions import model_version_create


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
    # initial training starts from the base model, incremental from the weights serving now: a
    # query encoder's own weights when one serves (it is the model that was tuned last), else the
    # store's (under an adapter, the weights it adapts)
    serving_weights = active_provider if isinstance(active_provider, LocalProvider) else weights
    start = serving_weights if job.job_type == TrainingJob.Type.INCREMENTAL else provider_for(active_space.model_key)
    model = trainer.load_model(str(start.weights))
    corpus_ids, corpus_texts = corpus_of(chatbot)
    negatives = list(train.negatives)
    if config["hard_negatives"]:
        mined = trainer.hard_negatives_mine(
            model, anchors=train.anchors, positives=train.positives, corpus=corpus_texts
        )
        negatives = [given or found for given, found in zip(negatives, mined)]
    if control.cancelled():
        raise trainer.Cancelled()
    control.beat(stage=Stage.TRAINING, progress=10)
    report = Reporter(control, low=10, high=80)
    workdir = Path(tempfile.mkdtemp(prefix=f"train-{job.pk}-", dir=scratch_dir()))
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
        held = heldout_queries(heldout)
        active_corpus = stored_vectors(chatbot, active_space, corpus_ids)
        if active_corpus is None:
            active_corpus = as_array(weights.embed(corpus_texts))
        metrics = evaluate(
            held,
            corpus_ids,
            candidate=(trainer.encode(model, held.texts), trainer.encode(model, corpus_texts)),
            active=(as_array(active_provider.embed(held.texts)), active_corpus),
            seed=config["seed"],
            previous=previous_version(chatbot),
        )
        metrics["active_space"] = active_space.key
        metrics["training"] = training_figures(
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
