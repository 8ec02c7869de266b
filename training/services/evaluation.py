"""Nightly retrieval evaluation: the version serving each chatbot, measured on its held-out
questions over its whole corpus, stored as a time series (``Evaluation``), exported as a gauge and
drawn as a chart, so quality is monitored like latency. The baseline is what the serving version
measured when it was judged (its gate evaluation), else its first nightly figure."""

from __future__ import annotations

import logging

import numpy as np
from django.utils import timezone

from search.services import serving_for
from tenants.errors import DomainError
from tenants.models import Chatbot
from training.models import Evaluation, ModelVersion
from training.services import trainer
from training.services.data import pair_texts
from training.services.runs.common import corpus_of, heldout_queries, stored_vectors

logger = logging.getLogger(__name__)


def evaluation_run(*, chatbot: Chatbot) -> Evaluation:
    """Measure the serving version now (as the chatbot's tenant) and record it."""
    from knowledge.embeddings import provider_for_space

    space = serving_for(chatbot).space
    version = ModelVersion.objects.filter(chatbot=chatbot, space=space).first()
    record = Evaluation(tenant_id=chatbot.tenant_id, chatbot=chatbot, version=version, space_key=space.key)
    try:
        held = heldout_queries(pair_texts(chatbot=chatbot, split="heldout"))
        corpus_ids, _ = corpus_of(chatbot)
        corpus = stored_vectors(chatbot, space, corpus_ids)
        if corpus is None:
            raise DomainError("Some chunks have no vector in the serving space yet; measured next time.")
        queries = np.asarray(provider_for_space(space).embed(held.texts), dtype=np.float32)
        summary = trainer.rank(queries, corpus, corpus_ids, held.relevant).summary()
    except DomainError as exc:
        record.note = exc.message
        record.save()
        return record
    record.queries = summary["queries"]
    record.ndcg_10, record.mrr_10, record.recall_10 = summary["ndcg_10"], summary["mrr_10"], summary["recall_10"]
    record.baseline_ndcg_10 = _baseline(chatbot, space.key, version)
    if record.baseline_ndcg_10 is None:
        record.baseline_ndcg_10 = record.ndcg_10  # the first measurement of this version is its baseline
    record.save()
    return record


def _baseline(chatbot: Chatbot, space_key: str, version: ModelVersion | None) -> float | None:
    if version is not None:
        judged = (version.metrics or {}).get("candidate", {}).get("ndcg_10")
        if judged is not None:
            return judged
    first = (
        Evaluation.objects.filter(chatbot=chatbot, space_key=space_key, ndcg_10__isnull=False)
        .order_by("measured_at")
        .values_list("ndcg_10", flat=True)
        .first()
    )
    return first


def evaluations_nightly() -> dict:
    """Scheduled (once a day): every chatbot with held-out questions gets measured."""
    from tenants.scoping import cross_tenant_context, tenant_context
    from training.models import TrainingPair

    with cross_tenant_context("nightly evaluation"):
        rows = list(
            Chatbot.objects.filter(pk__in=TrainingPair.objects.filter(split="heldout").values("chatbot_id"))
            .values_list("pk", "tenant_id")
            .order_by("pk")
        )
    measured = 0
    for chatbot_id, tenant_id in rows:
        with tenant_context(tenant_id):
            try:
                chatbot = Chatbot.objects.select_related("tenant").get(pk=chatbot_id)
                measured += evaluation_run(chatbot=chatbot).ndcg_10 is not None
            except Exception:  # one chatbot's trouble never stops the others' turn
                logger.exception("nightly evaluation of chatbot %s failed", chatbot_id)
    return {"chatbots": len(rows), "measured": measured, "at": timezone.now().isoformat()}
