"""Learning a query adapter (``knowledge.adapters.QueryAdapter``) over frozen vectors.

The chatbot's document vectors stay as they are; a low-rank residual on the query side,
``q' = normalise(q + (q @ down) @ up)``, is learned with the same objective as the fine-tune
(in-batch negatives plus a hard negative per pair, softmax over scaled cosines, as
MultipleNegativesRankingLoss), starting from the identity (``up`` is zero). In-batch rows that
share a positive are masked instead of counted as negatives. Seeded, on CPU or CUDA, one
optimiser step per batch with a linear warm-up and decay; ``on_progress`` after every step can
stop it (cancel).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from knowledge.adapters import QueryAdapter
from training.services.trainer import Cancelled, Progress, linear_schedule, training_device

SCALE = 20.0  # as MultipleNegativesRankingLoss: cosine similarities times 20


def hard_negatives_from_vectors(
    queries: np.ndarray,
    positives: np.ndarray,
    positive_ids: list[int | None],
    corpus: np.ndarray,
    corpus_ids: list[int],
    *,
    skip: int,
    margin: float,
) -> list[int | None]:
    """For each query, the corpus row ranked highest after the first ``skip`` ranks that is not
    its positive and scores at most ``(1 - margin)`` of the positive (as ``mine_hard_negatives``'
    range_min and relative_margin): an index into ``corpus``, or None."""
    out: list[int | None] = []
    ids = np.asarray(corpus_ids)
    pos_scores = np.sum(queries * positives, axis=1)
    window = min(len(corpus_ids), skip + 50)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ corpus.T
        top = np.argsort(-scores, axis=1)[:, :window]
        for row, order in enumerate(top):
            i = start + row
            limit = pos_scores[i] * (1 - margin)
            found = None
            for rank, j in enumerate(order):
                if rank < skip or (positive_ids[i] is not None and int(ids[j]) == positive_ids[i]):
                    continue
                if scores[row, j] <= limit:
                    found = int(j)
                    break
            out.append(found)
    return out


def train_adapter(
    *,
    queries: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray | None,
    positive_keys: list[str],
    rank: int,
    batch_size: int,
    epochs: float,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    on_progress: Callable[[Progress], bool],
) -> QueryAdapter:
    import torch

    device = training_device()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, dims = queries.shape

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)

    q_all, p_all = tensor(queries), tensor(positives)
    n_all = None if negatives is None else tensor(negatives)
    key_codes = {key: code for code, key in enumerate(dict.fromkeys(positive_keys))}
    keys = torch.tensor([key_codes[k] for k in positive_keys], device=device)
    down = torch.nn.Parameter(torch.randn(dims, rank, generator=generator).to(device) / math.sqrt(dims))
    up = torch.nn.Parameter(torch.zeros(rank, dims, device=device))
    optimiser = torch.optim.AdamW([down, up], lr=learning_rate, weight_decay=0.01)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, math.ceil(per_epoch * epochs))
    warmup = int(total * warmup_ratio)

    schedule = linear_schedule(optimiser, total=total, warmup=warmup)
    step = 0
    order = torch.randperm(n, generator=generator)
    cursor = 0
    while step < total:
        if cursor >= n:
            order, cursor = torch.randperm(n, generator=generator), 0
        batch = order[cursor : cursor + batch_size].to(device)
        cursor += batch_size
        q = q_all[batch]
        adapted = torch.nn.functional.normalize(q + (q @ down) @ up, dim=1)
        candidates = p_all[batch] if n_all is None else torch.cat([p_all[batch], n_all[batch]])
        scores = SCALE * adapted @ candidates.T
        same = keys[batch][:, None] == keys[batch][None, :]
        same.fill_diagonal_(False)  # another row's positive that is this row's answer too is no negative
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[:, : len(batch)] = same
        scores = scores.masked_fill(mask, float("-inf"))
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(batch), device=device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        if not on_progress(Progress(step=step, total=total, epoch=step / per_epoch, loss=float(loss.detach()))):
            raise Cancelled()
    return QueryAdapter(down.detach().cpu().numpy(), up.detach().cpu().numpy())
