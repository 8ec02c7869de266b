"""Fine-tuning and evaluating an embedding model with sentence-transformers.

- Training: ``SentenceTransformerTrainer`` with MultipleNegativesRankingLoss (the cached variant
  when the batch is larger than fits at once), ``no_duplicates`` batches, fixed seeds; hard
  negatives mined from the chatbot's own chunks with ``mine_hard_negatives``, skipping the
  nearest ranks and keeping a margin below the positive so paraphrases of the answer are not used
  as negatives.
- Evaluation: nDCG@10, MRR@10 and Recall@10 of held-out queries over the chatbot's whole corpus,
  per query (for paired comparisons) and per source.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from django.conf import settings

logger = logging.getLogger(__name__)

K = 10
CACHED_LOSS_FROM_BATCH = 64
MINI_BATCH = 32


class Cancelled(Exception):
    """The job was cancelled while training: no version is made."""


def training_device() -> str:
    wanted = settings.TRAINING_DEVICE
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device or training_device())


def hard_negatives_mine(model, *, anchors: list[str], positives: list[str], corpus: list[str]) -> list[str | None]:
    """One hard negative per pair from the corpus (None where none qualifies)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    if len(corpus) < 10:
        return [None] * len(anchors)
    dataset = Dataset.from_dict({"anchor": anchors, "positive": positives})
    mined = mine_hard_negatives(
        dataset,
        model,
        anchor_column_name="anchor",
        positive_column_name="positive",
        corpus=corpus,
        range_min=settings.TRAINING_NEGATIVE_SKIP_RANKS,
        range_max=min(len(corpus) - 1, 50),
        relative_margin=settings.TRAINING_NEGATIVE_MARGIN,
        num_negatives=1,
        sampling_strategy="top",
        output_format="triplet",
        batch_size=64,
        verbose=False,
    )
    found = {}
    for row in mined:
        found.setdefault((row["anchor"], row["positive"]), row["negative"])
    return [found.get((a, p)) for a, p in zip(anchors, positives)]


def linear_schedule(optimiser, *, total: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total`` (as the
    transformers trainer's default): the schedule of the loops written here (adapter, query encoder)."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(total - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


@dataclass
class Progress:
    step: int
    total: int
    epoch: float
    loss: float | None


def fine_tune(
    model,
    *,
    anchors: list[str],
    positives: list[str],
    negatives: list[str | None] | None,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    output_dir: str,
    on_progress: Callable[[Progress], bool],
):
    """Train ``model`` in place; ``on_progress`` after every step returns False to stop (cancel)."""
    import transformers
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    columns = {"anchor": anchors, "positive": positives}
    if negatives is not None and any(n is not None for n in negatives):
        # a pair the miner found no negative for (every candidate too close to its positive) keeps
        # its place with another pair's positive as its negative: no pair is dropped
        rng = random.Random(seed)
        filled = []
        for i, negative in enumerate(negatives):
            for _ in range(20 if negative is None and len(positives) > 1 else 0):
                other = rng.randrange(len(positives))
                if positives[other] != positives[i] and anchors[other] != anchors[i]:
                    negative = positives[other]
                    break
            filled.append(negative if negative is not None else "")  # (a tiny corpus: an easy negative)
        columns["negative"] = filled
    dataset = Dataset.from_dict(columns)
    if batch_size >= CACHED_LOSS_FROM_BATCH:
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=MINI_BATCH)
    else:
        loss = MultipleNegativesRankingLoss(model)
    steps_per_epoch = max(1, math.ceil(len(dataset) / batch_size))
    total = max(1, math.ceil(steps_per_epoch * epochs))
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        seed=seed,
        data_seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, total // 50),
        disable_tqdm=True,
        use_cpu=str(model.device) == "cpu",
        dataloader_num_workers=0,
    )

    class Reporter(transformers.TrainerCallback):
        last_loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            keep_going = on_progress(
                Progress(step=state.global_step, total=state.max_steps or total, epoch=state.epoch or 0.0,
                         loss=self.last_loss)
            )  # fmt: skip
            self.last_loss = None
            if not keep_going:
                control.should_training_stop = True
                raise Cancelled()
            return control

    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[Reporter()]
    )
    trainer.remove_callback(transformers.PrinterCallback)  # progress goes to the job row, not stdout
    transformers.set_seed(seed)
    began = time.monotonic()
    trainer.train()
    logger.info("fine-tuned on %d pairs in %.1fs", len(dataset), time.monotonic() - began)
    return model


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    return np.asarray(
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False),
        dtype=np.float32,
    )  # fmt: skip


@dataclass
class Ranking:
    """Per-query scores of one model over the held-out queries."""

    ndcg: np.ndarray
    mrr: np.ndarray
    recall: np.ndarray

    def summary(self, mask: np.ndarray | None = None) -> dict:
        pick = slice(None) if mask is None else mask
        n = int(self.ndcg[pick].shape[0])
        if n == 0:
            return {"queries": 0}
        return {
            "queries": n,
            "ndcg_10": round(float(self.ndcg[pick].mean()), 4),
            "mrr_10": round(float(self.mrr[pick].mean()), 4),
            "recall_10": round(float(self.recall[pick].mean()), 4),
        }


def rank(query_vectors: np.ndarray, corpus_vectors: np.ndarray, corpus_ids: list[int], relevant: list[set]) -> Ranking:
    """Exact top-10 by cosine (vectors are unit length) and the three metrics per query."""
    ids = np.asarray(corpus_ids)
    ndcg, mrr, recall = [], [], []
    for start in range(0, len(relevant), 256):
        scores = query_vectors[start : start + 256] @ corpus_vectors.T
        k = min(K, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        for row, (candidates, wanted) in enumerate(zip(top, relevant[start : start + 256])):
            order = candidates[np.argsort(-scores[row, candidates])]
            hits = [int(ids[i]) in wanted for i in order]
            dcg = sum(1.0 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
            ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(wanted), K)))
            ndcg.append(dcg / ideal if ideal else 0.0)
            first = next((r for r, hit in enumerate(hits) if hit), None)
            mrr.append(0.0 if first is None else 1.0 / (first + 1))
            recall.append(sum(hits) / len(wanted) if wanted else 0.0)
    return Ranking(np.asarray(ndcg), np.asarray(mrr), np.asarray(recall))


def paired_bootstrap(candidate: np.ndarray, baseline: np.ndarray, *, seed: int, rounds: int = 2000) -> dict:
    """Mean difference of per-query scores and its 95% interval (paired bootstrap over queries)."""
    diff = candidate - baseline
    if diff.size == 0:
        return {"gain": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, diff.size, size=(rounds, diff.size))
    means = diff[samples].mean(axis=1)
    return {
        "gain": round(float(diff.mean()), 4),
        "low": round(float(np.percentile(means, 2.5)), 4),
        "high": round(float(np.percentile(means, 97.5)), 4),
    }
