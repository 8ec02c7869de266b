"""Schemathesis against the API's own OpenAPI schema (``/api/schema/``) with a valid key.

Starts its own stack (the server `make run` starts, on a fresh database, a tenant with a small FAQ
ingested), then runs ``st run --checks all`` (requirements-bench.txt): server errors, status code,
content type and response schema conformance, positive and negative data, stateful sequences
(configuration in bench/schemathesis.toml). Goal: 0 failures. Prints JSON with
schemathesis's own summary lines; its JUnit report is kept under ``var/schemathesis/``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Stack, call, multipart  # noqa: E402

CHECKS = "all (bench/schemathesis.toml)"  # server errors, conformance, positive/negative data, stateful


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8770)
    parser.add_argument("--max-examples", type=int, default=25)
    args = parser.parse_args()
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        print(json.dumps({"skipped": "schemathesis is not installed: pip install -r requirements-bench.txt"}))
        return
    import django

    django.setup()
    reports = ROOT / "var" / "schemathesis"
    reports.mkdir(parents=True, exist_ok=True)
    with Stack("chatbot_training_schema", args.port, web_workers=1) as stack:
        body, ctype = multipart(
            {"chatbot_id": stack.chatbot, "content_type": "faq"},
            "faq.csv",
            b"question,answer\nHow do I reset my password?,Open Settings and press Reset password.\n",
        )
        call(f"{stack.api}/upload-training-data", stack.key, body, ctype)
        while call(f"{stack.api}/training-data/{stack.chatbot}", stack.key)["totals"]["ready"] < 1:
            time.sleep(0.5)
        began = time.monotonic()
        done = subprocess.run(
            [str(st), "--config-file", str(ROOT / "bench" / "schemathesis.toml"), "run", f"{stack.api}/schema/",
             "--url", f"http://127.0.0.1:{args.port}",
             "-H", f"Authorization: Bearer {stack.key}",
             "--max-examples", str(args.max_examples), "--request-timeout", "30", "--no-color",
             "--report", "junit", "--report-junit-path", str(reports / "junit.xml")],
            capture_output=True, text=True, cwd=ROOT, timeout=3600,
        )  # fmt: skip
        seconds = round(time.monotonic() - began, 1)
    (reports / "output.txt").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = [
        line for line in lines if any(w in line for w in ("passed", "failed", "error", "Operations", "Test cases"))
    ]
    print(
        json.dumps(
            {
                "benchmark": "schemathesis",
                "exit_code": done.returncode,
                "checks": CHECKS,
                "max_examples": args.max_examples,
                "seconds": seconds,
                "summary": summary[-12:],
                "failures": [line for line in lines if re.search(r"\bST\d{3}\b|FAILED", line)][:30],
                "junit": str(reports / "junit.xml"),
                "output": str(reports / "output.txt"),
                "goal": "exit code 0: no server errors, every response conforms to the schema",
            },
            indent=2,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
