"""Retrieval quality of semantic, keyword and hybrid search, through the real pipeline.

    python bench/quality.py [--fresh] [--datasets scifact,covid-faq,covid-faq-short,banking77]

Each dataset is uploaded as files into its own chatbot and ingested by the real ingestion task
(called in-process, Celery eager) into the database ``chatbot_training_quality`` (kept between
runs; ``--fresh`` rebuilds it), then every query runs through ``search.services.search_run``.
Prints nDCG@10 and Recall@100 per mode as JSON.

- scifact: ../shared/datasets/scifact, the 300 test queries (published nDCG@10: BM25 0.665,
  all-MiniLM-L6-v2 about 0.645). Relevance per abstract (a chunk counts for its abstract).
- covid-faq: the English FAQ of deepset COVID-QA; queries are the human paraphrases of FAQ
  questions in eval_question_similarity_en.csv (keyword search is weak on paraphrases).
- covid-faq-short: the same paraphrases against short entries (question + first sentence of the
  answer), where vectors are strong and keywords weaker still.
- banking77: 5 example questions per intent as the "FAQ"; 400 test questions; every example of
  the same intent is relevant (messy customer questions).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, use_database  # noqa: E402

DATA = SHARED / "datasets"
DATABASE = "chatbot_training_quality"


class Dataset:
    def __init__(self, name, files, queries, qrels, key, depth=100):
        self.name = name
        self.files = files  # [(filename, bytes, content_type)]
        self.queries = queries  # [(qid, text)]
        self.qrels = qrels  # qid -> {key: grade}
        self.key = key  # hit -> document key
        self.depth = depth  # chunks fetched per query (enough for Recall@100 over documents)

    def fingerprint(self) -> str:
        digest = hashlib.sha1()
        for name, content, kind in self.files:
            digest.update(name.encode() + kind.encode() + content)
        return digest.hexdigest()[:16]


def scifact() -> Dataset:
    folder = DATA / "scifact"
    lines = (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    files = [
        (f"scifact-{i // 500:02d}.jsonl", "\n".join(lines[i : i + 500]).encode(), "document")
        for i in range(0, len(lines), 500)
    ]
    qrels: dict = defaultdict(dict)
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels[row["query-id"]][row["corpus-id"]] = int(row["score"])
    queries = [
        (q["_id"], q["text"])
        for q in map(json.loads, (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines())
        if q["_id"] in qrels
    ]
    return Dataset("scifact", files, queries, qrels, key=lambda hit: str(hit.metadata.get("_id")), depth=200)


def covid_faq() -> Dataset:
    folder = DATA / "faq" / "covid_faq_deepset"
    with open(folder / "faq_covidbert.csv", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("lang", "en") == "en" and r["question"] and r["answer"]]
    seen, records = {}, []
    for row in rows:
        norm = " ".join(row["question"].lower().split())
        if norm in seen:
            continue
        seen[norm] = f"faq-{len(records)}"
        records.append({"question": row["question"], "answer": row["answer"], "faq_id": seen[norm]})
    queries, qrels = [], {}
    with open(folder / "eval_question_similarity_en.csv", encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            if row["similar"] != "1":
                continue
            for asked, known in ((row["question_2"], row["question_1"]), (row["question_1"], row["question_2"])):
                target = seen.get(" ".join(known.lower().split()))
                if target and " ".join(asked.lower().split()) not in seen:
                    qid = f"q{number}"
                    queries.append((qid, asked))
                    qrels[qid] = {target: 1}
                    break
    return _faq_records("covid-faq", records, queries, qrels, id_field="faq_id")


def _faq_records(name: str, records: list, queries, qrels, *, id_field: str, file_name: str | None = None) -> Dataset:
    """A dataset uploaded as one FAQ JSONL file of ``records``, results judged by ``id_field``."""
    body = "\n".join(json.dumps(r) for r in records).encode()
    return Dataset(
        name, [(f"{file_name or name}.jsonl", body, "faq")], queries, qrels, key=lambda h: h.metadata.get(id_field)
    )


def covid_faq_short() -> Dataset:
    """FAQ paraphrases against short FAQ entries: each question of the paraphrase file's pairs with
    the first sentence of its answer, asked in the pair's other wording. Vectors are strong here,
    keywords much weaker (a paraphrase shares few of the entry's rarer words)."""
    import re

    folder = DATA / "faq" / "covid_faq_deepset"
    with open(folder / "faq_covidbert.csv", encoding="utf-8", newline="") as handle:
        answers = {" ".join(r["question"].lower().split()): r["answer"] for r in csv.DictReader(handle) if r["answer"]}
    records, ids, queries, qrels = [], {}, [], {}
    with open(folder / "eval_question_similarity_en.csv", encoding="utf-8", newline="") as handle:
        pairs = [r for r in csv.DictReader(handle) if r["similar"] == "1"]
    for row in pairs:
        known = " ".join(row["question_1"].lower().split())
        if known in answers and known not in ids:
            ids[known] = f"s{len(records)}"
            first = re.split(r"(?<=[.!?])\s", answers[known].strip(), maxsplit=1)[0]
            records.append({"question": row["question_1"], "answer": first, "faq_id": ids[known]})
    for number, row in enumerate(pairs):
        known = " ".join(row["question_1"].lower().split())
        if known in ids and " ".join(row["question_2"].lower().split()) != known:
            queries.append((f"p{number}", row["question_2"]))
            qrels[f"p{number}"] = {ids[known]: 1}
    return _faq_records("covid-faq-short", records, queries, qrels, id_field="faq_id")


def banking77(per_intent: int = 5) -> Dataset:
    folder = DATA / "faq" / "banking77"
    rng = random.Random(77)
    by_intent: dict = defaultdict(list)
    with open(folder / "train.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            by_intent[row["category"]].append(row["text"])
    records, members = [], defaultdict(list)
    for intent in sorted(by_intent):
        for text in rng.sample(by_intent[intent], per_intent):
            ident = f"b{len(records)}"
            records.append({"text": text, "intent": intent, "example_id": ident})
            members[intent].append(ident)
    with open(folder / "test.csv", encoding="utf-8", newline="") as handle:
        tests = list(csv.DictReader(handle))
    rng.shuffle(tests)
    queries = [(f"t{i}", row["text"]) for i, row in enumerate(tests[:400])]
    qrels = {f"t{i}": {m: 1 for m in members[row["category"]]} for i, row in enumerate(tests[:400])}
    return _faq_records("banking77", records, queries, qrels, id_field="example_id", file_name="banking77-examples")


DATASETS = {"scifact": scifact, "covid-faq": covid_faq, "covid-faq-short": covid_faq_short, "banking77": banking77}


def ndcg_at(ranked: list, qrels: dict, k: int = 10) -> float:
    dcg = sum(qrels.get(key, 0) / math.log2(i + 2) for i, key in enumerate(ranked[:k]))
    ideal = sorted(qrels.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list, qrels: dict, k: int = 100) -> float:
    relevant = {key for key, grade in qrels.items() if grade > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def ensure_ingested(dataset: Dataset):
    """The dataset's chatbot, ingested through document_create + the ingestion task."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from knowledge.models import Document
    from knowledge.services import document_create
    from tenants.models import Chatbot
    from tenants.services import tenant_bootstrap

    name = f"{dataset.name}-{dataset.fingerprint()}"
    chatbot = Chatbot.objects.filter(name=name).select_related("tenant").first()
    if chatbot is None:
        bundle = tenant_bootstrap(name=f"Quality {name}", chatbot_name=name)
        chatbot = bundle.chatbot
    from tenants.scoping import tenant_context

    with tenant_context(chatbot.tenant_id):  # the uploads, as the tenant's requests make them
        done = Document.objects.filter(chatbot=chatbot, status__in=["ready", "failed"]).count()
        began = time.perf_counter()
        if done < len(dataset.files):
            Document.objects.filter(chatbot=chatbot).delete()
            for filename, content, kind in dataset.files:
                document_create(
                    tenant=chatbot.tenant,
                    chatbot=chatbot,
                    upload=SimpleUploadedFile(filename, content),
                    content_type=kind,
                )
        ingest_seconds = time.perf_counter() - began
        chatbot.refresh_from_db()
        failed = Document.objects.filter(chatbot=chatbot, status="failed").count()
    return chatbot, round(ingest_seconds, 1), failed


def evaluate(dataset: Dataset, chatbot, modes: dict) -> dict:
    """Every query through search_run in the chatbot's tenant scope, as its search requests run."""
    from tenants.scoping import tenant_context

    with tenant_context(chatbot.tenant_id):
        return _evaluate(dataset, chatbot, modes)


def _evaluate(dataset: Dataset, chatbot, modes: dict) -> dict:
    from search.arguments import SearchArguments
    from search.services import search_run

    scores: dict = {name: {"ndcg@10": [], "recall@100": [], "ms": []} for name in modes}
    for qid, text in dataset.queries:
        for name, (mode, weight) in modes.items():
            args = SearchArguments(
                query=text, chatbot_id=chatbot.pk, max_results=dataset.depth, mode=mode, weight=weight
            )
            result = search_run(chatbot=chatbot, args=args, log=False, use_cache=False)
            ranked, seen = [], set()
            for hit in result.results:
                key = dataset.key(hit)
                if key not in seen:
                    seen.add(key)
                    ranked.append(key)
            scores[name]["ndcg@10"].append(ndcg_at(ranked, dataset.qrels[qid]))
            scores[name]["recall@100"].append(recall_at(ranked, dataset.qrels[qid]))
            scores[name]["ms"].append(result.took_ms)
    return {
        name: {
            "ndcg@10": round(sum(v["ndcg@10"]) / len(v["ndcg@10"]), 4),
            "recall@100": round(sum(v["recall@100"]) / len(v["recall@100"]), 4),
            "mean_ms": round(sum(v["ms"]) / len(v["ms"]), 1),
        }
        for name, v in scores.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fresh", action="store_true", help="drop and re-ingest the quality database")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--modes", default="semantic,keyword,hybrid,hybrid_even_blend")
    args = parser.parse_args()
    if not (DATA / "scifact" / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"needs {DATA} (../shared is not beside this clone)"}))
        return
    import django

    django.setup()
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("bench"):  # the benchmark reads every tenant's results
        _run(args)


def _run(args) -> None:
    use_database(DATABASE, fresh=args.fresh)
    from chatbot_training.celery import app

    app.conf.task_always_eager = True
    modes = {
        "semantic": ("semantic", None),
        "keyword": ("keyword", None),
        "hybrid": ("hybrid", None),
        "hybrid_even_blend": ("hybrid", 0.5),
    }
    modes = {name: modes[name] for name in args.modes.split(",")}
    report = {"benchmark": "quality", "database": DATABASE, "datasets": {}}
    for name in args.datasets.split(","):
        dataset = DATASETS[name]()
        chatbot, ingest_seconds, failed = ensure_ingested(dataset)
        from knowledge.models import Chunk

        result = evaluate(dataset, chatbot, modes)
        singles = [result[m]["ndcg@10"] for m in ("semantic", "keyword") if m in result]
        best_single = max(singles) if singles else 0.0
        report["datasets"][name] = {
            "queries": len(dataset.queries),
            "files": len(dataset.files),
            "failed_files": failed,
            "chunks": Chunk.objects.filter(chatbot=chatbot).count(),
            "ingest_seconds": ingest_seconds,
            "modes": result,
            "hybrid_minus_best_single_ndcg@10": round(result["hybrid"]["ndcg@10"] - best_single, 4)
            if "hybrid" in result and len(singles) == 2
            else None,
        }
    report["references"] = {"scifact_ndcg@10": {"BM25": 0.665, "all-MiniLM-L6-v2": 0.645}}
    report["goals"] = {
        "scifact": "hybrid nDCG@10 above BM25 0.665 and MiniLM 0.645",
        "every dataset": "default hybrid nDCG@10 >= best single mode - 0.02",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
