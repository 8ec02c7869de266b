"""Sustained load: concurrent search clients over several tenants while documents ingest.

Starts its own stack (granian, one worker per core, plus a Celery worker) on a fresh database,
creates 5 tenants each with the same support FAQ plus a document of its own, then runs
``--clients`` (20) client threads for ``--seconds`` (600) of mixed searches — semantic, hybrid
and keyword, new and repeated questions, some with a conversation — across the tenants, while an
uploader keeps adding documents. Reports errors, p50/p95/p99 latency and throughput (overall and
per mode), and how many uploads finished. Baseline measured in the same run: one client alone for
``--baseline-seconds`` before the load. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Stack, call, multipart  # noqa: E402

FAQ = "question,answer\n" + "".join(
    f'"{q}","{a}"\n'
    for q, a in [
        ("How do I reset my password?", "Open Settings, choose Security and press Reset password."),
        ("Can I change my delivery address?", "Yes, until the parcel is dispatched, from the order page."),
        ("What payment methods do you accept?", "Visa, Mastercard, PayPal and bank transfer."),
        ("How long does a refund take?", "Refunds reach your card within five business days."),
        ("Do you ship abroad?", "We ship to thirty countries; see the shipping page for the list."),
        ("How do I cancel my subscription?", "Go to Billing and press Cancel subscription."),
        ("Where is my invoice?", "Invoices are under Billing, one per month, as PDF."),
        ("Is there a student discount?", "Students get 20 percent off with a valid student email."),
    ]
)
QUESTIONS = [
    "forgot my password",
    "change where my parcel goes",
    "can I pay with paypal",
    "when do I get my money back",
    "do you deliver to canada",
    "stop my subscription",
    "download invoice",
    "discount for students",
    "opening hours of the support line",
    "how to contact a human",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1) if ordered else 0.0


def summary(records: list, seconds: float) -> dict:
    latencies = [r[1] for r in records if r[2] == 200]
    return {
        "requests": len(records),
        "errors": sum(1 for r in records if r[2] != 200),
        "per_s": round(len(records) / seconds, 1),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
    }


class Clients:
    def __init__(self, stack: Stack, tenants: list[dict], count: int, seed: int):
        self.stack, self.tenants, self.count, self.seed = stack, tenants, count, seed
        self.stop = threading.Event()
        self.records: list[tuple[str, float, int, str]] = []  # (mode, ms, status, error)
        self.lock = threading.Lock()

    def _one(self, rng: random.Random) -> None:
        tenant = rng.choice(self.tenants)
        mode = rng.choices(["semantic", "hybrid", "keyword"], weights=[5, 4, 1])[0]
        if rng.random() < 0.5:
            query = rng.choice(QUESTIONS)  # repeated: the cache answers
        else:
            query = f"{rng.choice(QUESTIONS)} order {rng.randint(1, 10**6)}"  # new every time
        body = {"query": query, "chatbot_id": tenant["chatbot_id"], "mode": mode, "max_results": 5}
        if rng.random() < 0.2:
            body["conversation"] = [
                {"role": "user", "content": "I ordered a jacket last week"},
                {"role": "assistant", "content": "Thanks, how can I help with it?"},
            ]
        request = urllib.request.Request(
            f"{self.stack.api}/search",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {tenant['api_key']}", "Content-Type": "application/json"},
        )
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.loads(response.read())
                status, error = response.status, "" if "results" in payload else "no results field"
        except urllib.error.HTTPError as exc:
            status, error = exc.code, exc.read()[:200].decode(errors="replace")
        except OSError as exc:
            status, error = 0, str(exc)[:200]
        with self.lock:
            self.records.append((mode, (time.perf_counter() - began) * 1000, status, error))

    def _run(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        while not self.stop.is_set():
            self._one(rng)

    def run(self, seconds: float) -> float:
        threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.count)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(120)
        return time.monotonic() - began


def uploader(stack: Stack, tenants: list[dict], stop: threading.Event, sent: list) -> None:
    rng = random.Random(7)
    number = 0
    while not stop.is_set():
        tenant = rng.choice(tenants)
        text = "\n\n".join(
            f"Update {number}.{i}: the returns desk handles case {number * 100 + i} within {i % 5 + 1} days."
            for i in range(40)
        )
        body, ctype = multipart({"chatbot_id": tenant["chatbot_id"]}, f"update-{number}.txt", text.encode())
        try:
            document = call(f"{stack.api}/upload-training-data", tenant["api_key"], body, ctype)
            sent.append((tenant, document["document_id"]))
        except (urllib.error.HTTPError, OSError) as exc:
            sent.append((tenant, f"upload error {exc}"))
        number += 1
        stop.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8769)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    import django

    django.setup()
    with Stack("chatbot_training_load", args.port, web_workers=args.workers) as stack:
        tenants = [stack.tenant] + [stack.create_tenant(f"Load tenant {n}") for n in range(1, 5)]
        for number, tenant in enumerate(tenants):
            own = f"Tenant {number} runs its support line from 9 to 5 on weekdays."
            for name, content, kind in (("faq.csv", FAQ, "faq"), (f"own-{number}.txt", own, "document")):
                fields = {"chatbot_id": tenant["chatbot_id"], "content_type": kind}
                body, ctype = multipart(fields, name, content.encode())
                call(f"{stack.api}/upload-training-data", tenant["api_key"], body, ctype)
        for tenant in tenants:
            while call(f"{stack.api}/training-data/{tenant['chatbot_id']}", tenant["api_key"])["totals"]["ready"] < 2:
                time.sleep(0.5)
        Clients(stack, tenants, 4, seed=0).run(10)  # warm every server thread and the caches' misses
        alone = Clients(stack, tenants, 1, seed=1)
        baseline = summary(alone.records, alone.run(args.baseline_seconds))

        stop, sent = threading.Event(), []
        upload_thread = threading.Thread(target=uploader, args=(stack, tenants, stop, sent), daemon=True)
        upload_thread.start()
        load = Clients(stack, tenants, args.clients, seed=2)
        elapsed = load.run(args.seconds)
        stop.set()
        upload_thread.join(60)
        finished = 0
        deadline = time.monotonic() + 300
        for tenant, document_id in sent:
            while isinstance(document_id, int) and time.monotonic() < deadline:
                state = call(f"{stack.api}/documents/{document_id}/status", tenant["api_key"])["status"]
                if state in ("ready", "failed"):
                    finished += state == "ready"
                    break
                time.sleep(0.5)
    by_mode = {
        mode: summary([r for r in load.records if r[0] == mode], elapsed) for mode in ("semantic", "hybrid", "keyword")
    }
    report = {
        "benchmark": "load",
        "server": f"granian {args.workers} workers x 4 threads + 1 Celery worker, one machine with the clients",
        "tenants": len(tenants),
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "load": summary(load.records, elapsed),
        "by_mode": by_mode,
        "error_samples": sorted({r[3] for r in load.records if r[2] != 200})[:5],
        "uploads_during_load": len(sent),
        "uploads_ready": finished,
        "baseline_one_client": baseline,
        "goal": "0 errors",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
