"""Fine-tuning the query side only: the serving model's query encoder against the chatbot's
stored document vectors, which stay frozen.

Queries are short and no document passes through the model with gradients, so a step costs one
forward and backward pass over a batch of queries; and since the documents keep their vectors,
deploying the version re-embeds nothing (its space reads its store's vectors, like a query
adapter, but the whole encoder learns). The objective is MultipleNegativesRankingLoss' softmax
over scaled cosines, taken over *every* stored chunk vector instead of the batch's positives (a
matrix product of the batch with the corpus: cheap next to the encoder), so every chunk of the
corpus is a negative of every query and no mining pass is needed; the pair's other answers (the
same question's other positives, and chunks with the positive's exact text) are masked, not
counted as negatives. Seeded, AdamW with a linear warm-up and decay, on CUDA when present; bf16
autocast per ``TRAINING_BF16``; ``on_progress`` after every step can stop it (cancel).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
from django.conf import settings

from training.services.trainer import Cancelled, Progress, linear_schedule, training_device

SCALE = 20.0  # as MultipleNegativesRankingLoss: cosine similarities times 20


def autocast_dtype(device: str):
    """bf16 where ``TRAINING_BF16`` and the device allow it, else None (fp32)."""
    import torch

    wanted = settings.TRAINING_BF16
    if wanted == "off":
        return None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if wanted == "on" else None


def _negatives(corpus, targets, masked: list[list[int]], cap: int, generator):
    """What a batch is ranked against: every candidate row, or past ``cap`` rows a fresh random
    ``cap`` of them plus the batch's targets (a big corpus would make the product with every row
    cost more than the encoder). Returns those rows, each query's target among them, and the
    (rows, columns) to mask."""
    import torch

    total = corpus.shape[0]
    if total <= cap:
        rows = [r for r, cols in enumerate(masked) for _ in cols]
        return corpus, targets, (rows, [c for cols in masked for c in cols])
    picked = torch.unique(torch.cat([torch.randperm(total, generator=generator)[:cap].to(targets.device), targets]))
    position = {int(row): i for i, row in enumerate(picked.tolist())}
    drop = [(r, position[c]) for r, cols in enumerate(masked) for c in cols if c in position]
    wanted = torch.tensor([position[int(t)] for t in targets.tolist()], device=targets.device)
    return corpus[picked], wanted, ([r for r, _ in drop], [c for _, c in drop])


def train_query_encoder(
    model,
    *,
    anchors: list[str],
    candidates: np.ndarray,
    targets: list[int],
    masked: list[list[int]],
    batch_size: int,
    epochs: float,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    on_progress: Callable[[Progress], bool],
):
    """Train ``model`` (a SentenceTransformer) in place so that ``anchors[i]`` ranks
    ``candidates[targets[i]]`` first among all ``candidates`` (unit vectors, frozen), ignoring the
    rows ``masked[i]``."""
    import torch

    device = training_device()
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    corpus = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32)).to(device)
    target = torch.tensor(targets, device=device)
    n = len(anchors)
    per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, math.ceil(per_epoch * epochs))
    warmup = int(total * warmup_ratio)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)

    schedule = linear_schedule(optimiser, total=total, warmup=warmup)
    cap = settings.TRAINING_QUERY_ENCODER_MAX_NEGATIVES
    dtype = autocast_dtype(device)
    cast = (
        torch.autocast(device_type=device.split(":")[0], dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # (tokenize before sentence-transformers 6)
    model.train()
    step, cursor = 0, n
    order = torch.randperm(n, generator=generator)
    try:
        while step < total:
            if cursor >= n:
                order, cursor = torch.randperm(n, generator=generator), 0
            batch = order[cursor : cursor + batch_size].tolist()
            cursor += batch_size
            features = preprocess([anchors[i] for i in batch])
            features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
            with cast:
                embedded = model(features)["sentence_embedding"]
            queries = torch.nn.functional.normalize(embedded.float(), dim=1)
            against, wanted, drop = _negatives(corpus, target[batch], [masked[i] for i in batch], cap, generator)
            scores = SCALE * queries @ against.T
            if drop[0]:
                scores[drop] = float("-inf")
            loss = torch.nn.functional.cross_entropy(scores, wanted)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if not on_progress(Progress(step=step, total=total, epoch=step / per_epoch, loss=float(loss.detach()))):
                raise Cancelled()
    finally:
        model.eval()
    return model
