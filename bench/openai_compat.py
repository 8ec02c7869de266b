"""What the OpenAI-compatible search adds: ``POST /v1/vector_stores/{id}/search`` (ranker none)
against ``POST /api/search`` (semantic) on the same chatbot and the same queries, in one run.

    python bench/openai_compat.py [--queries N] [--port N]

A fresh database ``chatbot_training_openaibench`` served as ``make run`` serves it (granian, the
worker); its tenant uploads a BANKING77 FAQ (10 questions per intent, 770 rows); then each
held-out question goes to both endpoints, one keep-alive connection each, the order alternating.
The second of a pair finds the question's vector cached (the embedding cache is keyed by the
text), the first does not: alternating gives each endpoint the same mix. The results cache would
answer the second outright, so the /v1 request carries a score threshold of 1e-9 (a different
cache key, the same work). Prints JSON: p50/p95 of each and the difference (goal: at most 1 ms
at p50).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, Stack  # noqa: E402
from peers import _ms, _timed_upload  # noqa: E402


def _post(connection, path: str, key: str, body: dict) -> float:
    payload = json.dumps(body)
    began = time.perf_counter()
    connection.request("POST", path, payload, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    ms = (time.perf_counter() - began) * 1000
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {data[:300]!r}")
    return ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--port", type=int, default=8774)
    args = parser.parse_args()
    if not (SHARED / "datasets" / "faq" / "banking77" / "train.csv").exists():
        print(json.dumps({"benchmark": "openai_compat", "skipped": f"needs {SHARED}/datasets"}))
        return
    import django

    django.setup()
    from quality import banking77

    faq = banking77(per_intent=10)
    (name, body, _), = faq.files  # fmt: skip
    with Stack("chatbot_training_openaibench", args.port) as stack:
        _timed_upload(stack, stack.key, stack.chatbot, name, body, 0)
        ours = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
        theirs = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
        native, compat = [], []
        for warm in ("warm up", "the web workers"):
            _post(ours, "/api/search", stack.key, {"query": warm, "chatbot_id": stack.chatbot})
            _post(theirs, f"/v1/vector_stores/vs_{stack.chatbot}/search", stack.key, {"query": warm})
        for number, (_, text) in enumerate(faq.queries[: args.queries]):
            ranking = {"ranker": "none", "score_threshold": 1e-9}
            calls = [
                (native, ours, "/api/search", {"query": text, "chatbot_id": stack.chatbot, "mode": "semantic",
                                               "max_results": 10}),
                (compat, theirs, f"/v1/vector_stores/vs_{stack.chatbot}/search",
                 {"query": text, "max_num_results": 10, "ranking_options": ranking}),
            ]  # fmt: skip
            for samples, connection, path, request in calls if number % 2 == 0 else calls[::-1]:
                time.sleep(0.02)
                samples.append(_post(connection, path, stack.key, request))
    report = {
        "benchmark": "openai_compat",
        "queries": len(native),
        "api_search": _ms(native),
        "v1_vector_store_search": _ms(compat),
    }
    report["v1_minus_api_p50_ms"] = round(
        report["v1_vector_store_search"]["p50_ms"] - report["api_search"]["p50_ms"], 2
    )
    report["v1_minus_api_p95_ms"] = round(
        report["v1_vector_store_search"]["p95_ms"] - report["api_search"]["p95_ms"], 2
    )
    report["goal"] = "v1_minus_api_p50_ms <= 1.0 (both are answered by the search fast path)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
