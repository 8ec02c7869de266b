"""Training: throughput, the quality lift on SciFact, the gate on a bad version, re-embedding on deploy.

    python bench/training.py [--epochs 1] [--batch-size 16]

Runs in-process on the SciFact chatbot of bench/quality.py (database ``chatbot_training_quality``,
ingested there on first use), with Celery eager (jobs run as their task functions, in this
process), API calls through Django's test client with the tenant's key, and searches through
``search.services.search_run`` (the code behind ``POST /api/search``):

1. nDCG@10 of the 300 SciFact test queries with the base model;
2. the 809 train queries' pairs (query → the first chunk of each relevant abstract) sent to
   ``POST /api/training/pairs``; ``POST /api/training/start`` (hard negatives mined); the gate's
   verdict; a deploy (every chunk re-embedded, then one switch); nDCG@10 of the test queries again;
   rollback to the base model (so bench/quality.py keeps measuring the base model);
3. the same train queries with shuffled positives (held-out pairs kept correct): the gate must
   refuse that version;
4. a query adapter (``job_type: adapter``) on the same pairs over the base model's stored
   vectors: its gate, its deploy (nothing re-embedded) and the test queries' nDCG@10 through it;
5. raw baselines in the same run: ``SentenceTransformerTrainer`` with MultipleNegativesRankingLoss
   on the same pairs and settings (pairs/min; run before and after the product's jobs, averaged),
   and ``SentenceTransformer.encode`` of every chunk (chunks/s) against the deploy's re-embedding;
6. query latency (p50/p95 of the test searches) with the base model, the fine-tuned version and
   the adapter serving.

Prints one JSON summary. Goals: training ≥ 0.9 × raw trainer pairs/min; nDCG@10 ≥ base + 0.02;
the shuffled version refused; re-embedding ≥ 0.8 × raw encode.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, use_database  # noqa: E402
from quality import DATABASE, ensure_ingested, ndcg_at, scifact  # noqa: E402

DATA = SHARED / "datasets" / "scifact"


def train_pairs(chatbot) -> list[dict]:
    """query → first chunk of each relevant abstract (by the abstract's _id in chunk metadata)."""
    from knowledge.models import Chunk

    first_chunk: dict[str, int] = {}
    for chunk_id, metadata in (
        Chunk.objects.filter(chatbot=chatbot).order_by("document_id", "position").values_list("id", "metadata")
    ):
        first_chunk.setdefault(str((metadata or {}).get("_id")), chunk_id)
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries.jsonl").read_text(encoding="utf-8").splitlines())
    }
    pairs = []
    with open(DATA / "qrels" / "train.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0 and row["corpus-id"] in first_chunk and row["query-id"] in queries:
                pairs.append({"query": queries[row["query-id"]], "chunk_id": first_chunk[row["corpus-id"]]})
    return pairs


def test_ndcg(dataset, chatbot, latencies: list | None = None) -> float:
    """nDCG@10 of the test queries through ``search_run`` (uncached); each search's milliseconds
    go to ``latencies`` (after one warm-up search, which loads a new version's query encoder)."""
    from search.arguments import SearchArguments
    from search.services import search_run

    chatbot.refresh_from_db()
    warm_up = SearchArguments(query="warm up", chatbot_id=chatbot.pk)
    search_run(chatbot=chatbot, args=warm_up, log=False, use_cache=False)
    scores = []
    for qid, text in dataset.queries:
        began = time.perf_counter()
        args = SearchArguments(query=text, chatbot_id=chatbot.pk, max_results=dataset.depth)
        result = search_run(chatbot=chatbot, args=args, log=False, use_cache=False)
        if latencies is not None:
            latencies.append((time.perf_counter() - began) * 1000)
        ranked, seen = [], set()
        for hit in result.results:
            key = dataset.key(hit)
            if key not in seen:
                seen.add(key)
                ranked.append(key)
        scores.append(ndcg_at(ranked, dataset.qrels[qid]))
    return round(sum(scores) / len(scores), 4)


def upload(api, chatbot, pairs) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    body = "\n".join(json.dumps(p) for p in pairs).encode()
    response = api.post(
        "/api/training/pairs",
        {"chatbot_id": chatbot.pk, "file": SimpleUploadedFile("pairs.jsonl", body)},
        format="multipart",
    )
    assert response.status_code == 202, response.content
    return response.json()


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)], 2),
        "searches": len(ordered),
    }


def deploy(api, chatbot, version) -> float:
    from django.test import TestCase

    began = time.monotonic()
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = api.post(f"/api/models/{version['version_id']}/deploy", {"force": True}, format="json")
    assert response.status_code == 202, response.content
    seconds = time.monotonic() - began
    listing = api.get(f"/api/models/{chatbot.pk}").json()
    assert listing["serving"] == version["embedding_space"], listing
    return seconds


def train(api, chatbot, config: dict, job_type: str | None = "initial_training") -> dict:
    """A job through ``POST /api/training/start`` (``job_type`` None: the default job)."""
    from django.test import TestCase

    body = {"chatbot_id": chatbot.pk, "config": config} | ({"job_type": job_type} if job_type else {})
    with TestCase.captureOnCommitCallbacks(execute=True):  # the eager task (and an auto deploy) runs at "commit"
        response = api.post("/api/training/start", body, format="json")
    assert response.status_code == 202, response.content
    status = api.get(response.json()["status_url"]).json()
    assert status["status"] == "succeeded", status
    return status


DEFAULT_GOALS = {
    "default_job pairs_per_minute": ">= 1000",
    "default_job wall_vs_raw_epoch": "<= 1.0 (POST /api/training/start to the version serving, against one raw epoch)",
    "default_job lift_ndcg@10": ">= the full fine-tune's (+0.031 measured before)",
}


def default_job(api, chatbot, dataset, latency: dict) -> dict:
    """``POST /api/training/start`` without ``job_type`` (the query encoder over the stored vectors)
    with auto_deploy: seconds until the version serves, its stage timings, the test queries through
    it; then rolled back."""
    from training.models import TrainingJob

    began = time.monotonic()
    job = train(api, chatbot, {"sources": ["upload"], "seed": 42, "auto_deploy": True}, job_type=None)
    listing = api.get(f"/api/models/{chatbot.pk}").json()
    version = next(v for v in listing["versions"] if v["job_id"] == job["job_id"])
    wall = time.monotonic() - began
    serving = listing["serving"] == version["embedding_space"]  # auto_deploy: only what passes the gate
    stages = TrainingJob.objects.get(pk=job["job_id"]).stage_seconds
    report = {
        "job_type": job["job_type"],
        "start_to_serving_seconds": round(wall, 1),
        "stage_seconds": stages,
        "training": job["metrics"]["training"],
        "pairs_per_minute": job["metrics"]["training"]["pairs_per_minute"],
        "heldout": {"active": job["metrics"]["active"], "candidate": job["metrics"]["candidate"]},
        "gate": version["gate"],
        "serving": serving,
    }
    if serving:
        report["test_ndcg@10"] = test_ndcg(dataset, chatbot, latency["query_encoder"])
        api.post(f"/api/models/{chatbot.pk}/rollback")
    else:  # refused: measured through a forced deploy, and the wall time is not one
        report["start_to_serving_seconds"] = None
        report["forced_deploy_seconds"] = round(deploy(api, chatbot, version), 1)
        report["test_ndcg@10"] = test_ndcg(dataset, chatbot, latency["query_encoder"])
        api.post(f"/api/models/{chatbot.pk}/rollback")
    return report


def bf16_probe(chatbot, steps: int = 12) -> dict:
    """pairs/min of the query encoder's training loop in fp32 and under bf16 autocast, same inputs."""
    import numpy as np
    from django.test import override_settings

    from knowledge.models import ChunkEmbedding
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.tokens import local_model_path
    from training.services import query_encoder, trainer
    from training.services.data import pair_texts

    space = chatbot_space_ensure_active(chatbot=chatbot).space
    corpus = np.asarray(ChunkEmbedding.objects.filter(chatbot=chatbot, space=space.store)
                        .order_by("chunk_id").values_list("embedding", flat=True), dtype=np.float32)  # fmt: skip
    anchors = pair_texts(chatbot=chatbot, split="train", sources=["upload"]).anchors[: steps * 32]
    targets = [i % len(corpus) for i in range(len(anchors))]
    out = {}
    for mode in ("off", "on"):
        model = trainer.load_model(str(local_model_path()), "cpu")
        with override_settings(TRAINING_BF16=mode):
            began = time.monotonic()
            query_encoder.train_query_encoder(model, anchors=anchors, candidates=corpus, targets=targets,
                                              masked=[[] for _ in anchors], batch_size=32, epochs=1,
                                              learning_rate=1e-4, warmup_ratio=0.1, seed=42,
                                              on_progress=lambda p: True)  # fmt: skip
            out["bf16" if mode == "on" else "fp32"] = round(len(anchors) / (time.monotonic() - began) * 60, 1)
    return {"pairs_per_minute": out, "bf16_vs_fp32": round(out["bf16"] / out["fp32"], 3)}


def raw_trainer(anchors, positives, *, batch_size, epochs, learning_rate, warmup_ratio, seed) -> float:
    """pairs/min of the plain sentence-transformers trainer on the same pairs and settings."""
    import transformers
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from knowledge.tokens import local_model_path

    model = SentenceTransformer(str(local_model_path()), device="cpu")
    with tempfile.TemporaryDirectory() as output:
        began = time.monotonic()
        args = SentenceTransformerTrainingArguments(
            output_dir=output,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_ratio=warmup_ratio,
            seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}),
            loss=MultipleNegativesRankingLoss(model),
        )
        trainer.remove_callback(transformers.PrinterCallback)  # as the product's: no log lines on stdout
        trainer.train()
        seconds = time.monotonic() - began
    return len(anchors) * epochs / seconds * 60


def raw_encode(path: str, texts: list[str]) -> float:
    """chunks/s of ``SentenceTransformer.encode`` alone (no database), as the provider batches."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.encode(texts[:32], batch_size=32)
    began = time.monotonic()
    model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    return len(texts) / (time.monotonic() - began)


def raw_trainer_run(chatbot, args) -> float:
    from training.services.data import pair_texts

    texts = pair_texts(chatbot=chatbot, split="train", sources=["upload"])
    return raw_trainer(texts.anchors, texts.positives, batch_size=args.batch_size, epochs=args.epochs,
                       learning_rate=args.learning_rate, warmup_ratio=0.1, seed=42)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--jobs", choices=["all", "default"], default="all",
                        help="default: only the default job (query encoder) against the raw trainer")  # fmt: skip
    args = parser.parse_args()
    if not (DATA / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"needs {DATA} (../shared is not beside this clone)"}))
        return
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("bench"):
        use_database(DATABASE, fresh=False)
        from chatbot_training.celery import app

        app.conf.task_always_eager = True
        dataset = scifact()
        chatbot, _, _ = ensure_ingested(dataset)
    from tenants.scoping import tenant_context

    with tenant_context(chatbot.tenant_id):
        print(json.dumps(_run(args, dataset, chatbot), indent=2))


def _run(args, dataset, chatbot) -> dict:
    from rest_framework.test import APIClient

    from knowledge.models import Chunk
    from tenants.services import api_key_create
    from training.models import ModelVersion, TrainingPair

    api = APIClient()
    key = api_key_create(tenant=chatbot.tenant, name="bench training", scopes=["search", "read", "write"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key.raw_key}")
    while ModelVersion.objects.filter(chatbot=chatbot, status="active").exists():  # an earlier run's leftovers
        api.post(f"/api/models/{chatbot.pk}/rollback")
    ModelVersion.objects.filter(chatbot=chatbot).exclude(status="active").update(status="retired")
    TrainingPair.objects.filter(chatbot=chatbot).delete()

    report: dict = {
        "benchmark": "training",
        "dataset": "scifact",
        "chunks": Chunk.objects.filter(chatbot=chatbot).count(),
    }
    latency: dict[str, list] = {"base": [], "query_encoder": [], "fine_tuned": [], "adapter": []}
    report["base_test_ndcg@10"] = test_ndcg(dataset, chatbot, latency["base"])

    pairs = train_pairs(chatbot)
    report["pairs_uploaded"] = upload(api, chatbot, pairs) | {"sent": len(pairs)}
    report["pairs_uploaded"].pop("errors", None)
    report["default_job"] = default_job(api, chatbot, dataset, latency)
    raw_single = raw_trainer_run(chatbot, args)
    report["default_job"]["raw_trainer_pairs_per_min"] = round(raw_single, 1)
    epoch_seconds = report["default_job"]["training"]["pairs"] / raw_single * 60
    report["default_job"]["raw_trainer_epoch_seconds"] = round(epoch_seconds, 1)
    wall = report["default_job"]["start_to_serving_seconds"]
    report["default_job"]["wall_vs_raw_epoch"] = round(wall / epoch_seconds, 3) if wall else None
    report["default_job"]["lift_ndcg@10"] = round(
        report["default_job"]["test_ndcg@10"] - report["base_test_ndcg@10"], 4
    )
    report["default_job"]["bf16_probe"] = bf16_probe(chatbot)
    if args.jobs == "default":
        report["query_latency"] = {name: percentiles(values) for name, values in latency.items() if values}
        report["goals"] = DEFAULT_GOALS
        return report
    config = {
        "batch_size": args.batch_size,
        "num_epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "warmup_ratio": 0.1,
        "hard_negatives": True,
        "seed": 42,
        "sources": ["upload"],  # the SciFact pairs (the chatbot's synthetic pairs are another experiment)
    }
    raw_before = raw_trainer_run(chatbot, args)  # the raw trainer before and after the product's jobs
    began = time.monotonic()
    job = train(api, chatbot, config)
    job_seconds = time.monotonic() - began
    listing = api.get(f"/api/models/{chatbot.pk}").json()
    version = next(v for v in listing["versions"] if v["job_id"] == job["job_id"])
    report["job"] = {
        "seconds": round(job_seconds, 1),
        "training": job["metrics"]["training"],
        "heldout": {"active": job["metrics"]["active"], "candidate": job["metrics"]["candidate"]},
        "bootstrap": job["metrics"]["bootstrap"],
        "gate": version["gate"],
    }

    deploy_seconds = deploy(api, chatbot, version)
    chunks = report["chunks"]
    report["deploy"] = {"seconds": round(deploy_seconds, 1), "chunks_per_s": round(chunks / deploy_seconds, 1)}
    report["fine_tuned_test_ndcg@10"] = test_ndcg(dataset, chatbot, latency["fine_tuned"])
    report["lift_ndcg@10"] = round(report["fine_tuned_test_ndcg@10"] - report["base_test_ndcg@10"], 4)
    rolled = api.post(f"/api/models/{chatbot.pk}/rollback").json()
    report["rolled_back_to"] = rolled["space"]

    # a query adapter over the base model's stored vectors (the only option for a hosted model)
    began = time.monotonic()
    adapted = train(api, chatbot, {"sources": ["upload"], "seed": 42}, job_type="adapter")
    adapter_seconds = time.monotonic() - began
    listing = api.get(f"/api/models/{chatbot.pk}").json()
    adapter_version = next(v for v in listing["versions"] if v["job_id"] == adapted["job_id"])
    adapter_deploy = deploy(api, chatbot, adapter_version)
    report["adapter"] = {
        "job_seconds": round(adapter_seconds, 1),
        "training": adapted["metrics"]["training"],
        "heldout": {"active": adapted["metrics"]["active"], "candidate": adapted["metrics"]["candidate"]},
        "gate": adapter_version["gate"],
        "deploy_seconds": round(adapter_deploy, 2),
        "test_ndcg@10": test_ndcg(dataset, chatbot, latency["adapter"]),
    }
    report["adapter"]["lift_ndcg@10"] = round(report["adapter"]["test_ndcg@10"] - report["base_test_ndcg@10"], 4)
    api.post(f"/api/models/{chatbot.pk}/rollback")
    report["query_latency"] = {name: percentiles(values) for name, values in latency.items()}

    # a version trained on shuffled positives (the held-out pairs stay correct): the gate refuses it
    uploaded = TrainingPair.objects.filter(chatbot=chatbot, split="train", source="upload")
    train_rows = list(uploaded.values_list("query", "chunk_id"))
    uploaded.delete()
    targets = [chunk_id for _, chunk_id in train_rows]
    random.Random(7).shuffle(targets)
    shuffled = [{"query": q, "chunk_id": c} for (q, _), c in zip(train_rows, targets)]
    upload(api, chatbot, shuffled)
    bad = train(api, chatbot, {**config, "hard_negatives": False})
    listing = api.get(f"/api/models/{chatbot.pk}").json()
    bad_version = next(v for v in listing["versions"] if v["job_id"] == bad["job_id"])
    report["shuffled"] = {
        "heldout": {"active": bad["metrics"]["active"], "candidate": bad["metrics"]["candidate"]},
        "gate": bad_version["gate"],
        "training": bad["metrics"]["training"],
    }

    # raw baselines, same run, same pairs and settings (without mined negatives, as the shuffled job)
    raw_after = raw_trainer_run(chatbot, args)
    raw = (raw_before + raw_after) / 2
    from knowledge.chunking import embedding_text
    from knowledge.embeddings import artifact_path

    texts = [
        embedding_text(t, c)
        for t, c in Chunk.objects.filter(chatbot=chatbot).order_by("id").values_list("text", "context")
    ]  # every chunk, as the deploy re-embedded them
    weights = artifact_path(ModelVersion.objects.get(pk=version["version_id"]).space.artifact)
    raw_chunks_per_s = raw_encode(str(weights), texts)
    product = bad["metrics"]["training"]["pairs_per_minute"]
    report["throughput"] = {
        "product_pairs_per_min": product,
        "product_with_hard_negatives_pairs_per_min": job["metrics"]["training"]["pairs_per_minute"],
        "raw_trainer_pairs_per_min": round(raw, 1),
        "raw_trainer_runs": [round(raw_before, 1), round(raw_after, 1)],
        "ratio": round(product / raw, 3),
    }
    report["reembed"] = {
        "deploy_chunks_per_s": report["deploy"]["chunks_per_s"],
        "raw_encode_chunks_per_s": round(raw_chunks_per_s, 1),
        "ratio": round(report["deploy"]["chunks_per_s"] / raw_chunks_per_s, 3),
    }
    base_p50 = report["query_latency"]["base"]["p50_ms"]
    report["query_latency"]["fine_tuned_vs_base_p50"] = round(
        report["query_latency"]["fine_tuned"]["p50_ms"] / base_p50, 3
    )
    report["query_latency"]["adapter_vs_base_p50"] = round(report["query_latency"]["adapter"]["p50_ms"] / base_p50, 3)
    report["query_latency"]["query_encoder_vs_base_p50"] = round(
        report["query_latency"]["query_encoder"]["p50_ms"] / base_p50, 3
    )
    lift = report["default_job"]["lift_ndcg@10"]
    report["default_job"]["lift_vs_fine_tune"] = round(lift - report["lift_ndcg@10"], 4)
    report["goals"] = {
        **DEFAULT_GOALS,
        "throughput ratio": ">= 0.9",
        "lift_ndcg@10": ">= 0.02",
        "shuffled version": "refused by the gate",
        "reembed ratio": ">= 0.8",
        "fine-tuned query latency": "same as the base model's (p50 ratio <= 1.1)",
    }
    report["met"] = {
        "throughput": report["throughput"]["ratio"] >= 0.9,
        "lift": report["lift_ndcg@10"] >= 0.02,
        "shuffled_refused": not bad_version["gate"]["passed"],
        "reembed": report["reembed"]["ratio"] >= 0.8,
        "query_latency": report["query_latency"]["fine_tuned_vs_base_p50"] <= 1.1,
    }
    return report


if __name__ == "__main__":
    main()
