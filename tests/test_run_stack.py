"""`make run` as a newcomer runs it: ``manage.py run_stack`` in a real process tree (granian with
the search fast path, a Celery worker, beat) on the test database; debug off, static files served,
JSON 404s for unknown API paths, an upload ingested by the real worker and found by search, and
Ctrl-C stops every process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, headers: dict | None = None, data: bytes | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()  # headers: case-insensitive
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_make_run_serves_production_style_and_ctrl_c_stops_everything(worker_env, tmp_path):
    from django.conf import settings

    from bench.common import multipart

    port = _free_port()
    queue = f"run-stack-{uuid.uuid4().hex[:6]}"
    env = {**worker_env, "CELERY_QUEUE": queue, "CELERY_TRAINING_QUEUE": f"{queue}-training", "WEB_WORKERS": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log = open(tmp_path / "run_stack.log", "w+")
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "run_stack", "--addr", f"127.0.0.1:{port}"],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        credentials = {}
        while time.monotonic() < deadline:
            log.seek(0)
            text = log.read()
            for line in text.splitlines():
                name, _, value = line.strip().partition(": ")
                if name in ("api_key", "username", "password", "chatbot_id"):
                    credentials[name] = value.strip()
            try:
                if len(credentials) == 4 and _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert stack.poll() is None, text[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError("run_stack did not serve:\n" + text[-3000:])
        names = {p.name() for p in psutil.Process(stack.pid).children(recursive=True)}
        assert "granian" in " ".join(names) or any("granian" in " ".join(p.cmdline()) for p in
                                                    psutil.Process(stack.pid).children(recursive=True))  # fmt: skip

        status, headers, body = _get(f"{base}/api/no-such-operation/1")  # an unknown API path
        assert status == 404 and headers["Content-Type"] == "application/json", body[:300]
        assert json.loads(body)["error"]["code"] == "not_found"
        status, _, body = _get(f"{base}/no-such-page")
        assert status == 404 and b"URLconf" not in body and b"DEBUG" not in body  # not Django's debug page
        status, headers, body = _get(f"{base}/static/app.css")
        assert status == 200 and "css" in headers["Content-Type"] and b"label" in body
        assert _get(f"{base}/login/")[0] == 200

        key, chatbot = credentials["api_key"], int(credentials["chatbot_id"])
        auth = {"Authorization": f"Bearer {key}"}
        data, content_type = multipart(
            {"chatbot_id": chatbot}, "hours.txt", b"The support line is open from nine to five on weekdays."
        )
        status, _, body = _get(f"{base}/api/upload-training-data", {**auth, "Content-Type": content_type}, data)
        assert status == 202, body
        status_url = json.loads(body)["status_url"]
        while time.monotonic() < deadline + 120:
            state = json.loads(_get(status_url, auth)[2])
            if state["status"] in ("ready", "failed"):
                break
            time.sleep(0.5)
        assert state["status"] == "ready", state
        query = json.dumps({"query": "When can I call support?", "chatbot_id": chatbot}).encode()
        status, headers, body = _get(f"{base}/api/search", {**auth, "Content-Type": "application/json"}, query)
        assert status == 200 and "nine to five" in json.loads(body)["results"][0]["content"]
        assert "X-Frame-Options" not in headers  # answered by the fast path in front of Django

        processes = [psutil.Process(stack.pid), *psutil.Process(stack.pid).children(recursive=True)]
        os.kill(stack.pid, signal.SIGINT)  # Ctrl-C
        stack.wait(timeout=60)
        gone, alive = psutil.wait_procs(processes, timeout=30)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
        log.close()
