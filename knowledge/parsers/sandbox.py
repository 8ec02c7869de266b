"""Parsing (and the chunking after it) in a resource-limited child process.

A parser bug, a decompression bomb, a pathological PDF or text that makes a pattern backtrack
must cost a child process, never the Celery worker (which holds the model, the database
connection and other jobs). Each worker process keeps one child (``python -m
knowledge.parsers.sandbox``, no Django, no model) and sends it one file at a time. The child
parses it and, when asked, prepares it for storing (``knowledge/preparation.py``: whitespace
normalised, chunked, filtered, language detected), telling the parent when it moves on to that
second stage. Each stage has its limits:

- memory: ``RLIMIT_AS`` (``PARSER_MEMORY_MB``) set in the child before it reads anything; an
  allocation past it raises MemoryError there (reported) or kills it;
- CPU: a soft ``RLIMIT_CPU`` of ``PARSER_CPU_SECONDS`` (parsing) and then
  ``INGESTION_CHUNKING_SECONDS`` (preparing) more than the child has used so far (SIGXCPU ends it);
- wall time: the parent stops waiting after ``PARSER_WALL_SECONDS`` (parsing), then
  ``INGESTION_CHUNKING_SECONDS`` (preparing), and kills it.

The answer comes back as JSON (never pickle: the child handled hostile bytes). Any failure turns into
:class:`ParseError` with a reason for the uploader, and the next file gets a fresh child.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from knowledge.parsers.base import Block, ParsedConversation, ParsedDocument, ParseError, Turn

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
_HEADER = struct.Struct("!Q")


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_mb: int = 1024
    cpu_seconds: int = 120
    wall_seconds: float = 180.0
    chunking_seconds: float = 120.0  # CPU and wall time of the preparing stage


# --- The child ---------------------------------------------------------------------------


def _send(stream, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream) -> bytes | None:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    return stream.read(_HEADER.unpack(head)[0])


def _cpu_budget(seconds) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (spent + max(1, int(seconds)), resource.RLIM_INFINITY))


def _child(memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from knowledge.parsers import parse_file  # imported once, reused for every file

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _receive(stdin)
        if header is None:
            return
        request = json.loads(header)
        data = _receive(stdin) or b""
        _cpu_budget(request["cpu_seconds"])
        try:
            parsed = parse_file(data, request["filename"])
            plan = request.get("chunking")
            prepared = None
            if plan is not None:
                from knowledge.preparation import ChunkingPlan, prepare, prepared_to_json

                _send(stdout, json.dumps({"stage": "chunking"}).encode())
                _cpu_budget(request["chunking_seconds"])
                prepared = prepared_to_json(prepare(parsed, ChunkingPlan(**plan)))
                parsed.blocks = []  # the parent stores the chunks, not the blocks
            answer = {"ok": True, "document": dataclasses.asdict(parsed)}
            if prepared is not None:
                answer["prepared"] = prepared
        except ParseError as exc:
            answer = {"ok": False, "reason": exc.reason}
        except MemoryError:
            answer = {"ok": False, "limit": "memory"}
        except RecursionError:
            answer = {"ok": False, "reason": "The file is nested too deeply to be read."}
        except Exception as exc:  # a parser bug: reported, the child lives on
            answer = {"ok": False, "crash": f"{type(exc).__name__}: {exc}"[:500]}
        del data
        _send(stdout, json.dumps(answer, default=str).encode())


# --- The parent ---------------------------------------------------------------------------


def _document(raw: dict) -> ParsedDocument:
    blocks = [Block(**{**b, "heading_path": tuple(b.get("heading_path") or ())}) for b in raw.pop("blocks")]
    conversations = [
        ParsedConversation(**{**c, "turns": [Turn(**t) for t in c["turns"]]}) for c in raw.pop("conversations")
    ]
    return ParsedDocument(**raw, blocks=blocks, conversations=conversations)


class Sandbox:
    """One child process, reused file after file, replaced after anything goes wrong."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.timed_out = False
        self.stage = "parsing"

    def _start(self) -> subprocess.Popen:
        secret = ("DATABASE", "REDIS", "OPENAI", "DJANGO_SECRET")
        env = {k: v for k, v in os.environ.items() if not k.startswith(secret)}  # it needs none of them
        env["PYTHONPATH"] = str(ROOT)
        return subprocess.Popen(
            [sys.executable, "-m", "knowledge.parsers.sandbox", str(self.limits.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            close_fds=True,
            start_new_session=True,  # a signal to the worker's group does not reach it, and back
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def parse(self, data: bytes, filename: str) -> ParsedDocument:
        return self.parse_and_prepare(data, filename)[0]

    def parse_and_prepare(self, data: bytes, filename: str, *, chunking=None, on_stage=None):
        """``(document, prepared)``: the parsed file and, when a chunking plan is given, the
        chunks prepared from it (``knowledge.preparation.Prepared``; else None)."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = self._start()
            process = self.process
            self.stage = "parsing"
            request = {"filename": filename, "cpu_seconds": self.limits.cpu_seconds}
            if chunking is not None:
                request["chunking"] = dataclasses.asdict(chunking)
                request["chunking_seconds"] = self.limits.chunking_seconds
            try:
                _send(process.stdin, json.dumps(request).encode())
                _send(process.stdin, data)
                answer = self._answer(process, on_stage=on_stage)
            except (BrokenPipeError, ConnectionError, OSError):
                answer = None
            except BaseException:  # e.g. the job's lease was lost at a stage change: the child is mid-file
                self.stop()
                raise
            if answer is None:
                self.stop()
                raise ParseError(self._death_reason(process))
            result = json.loads(answer)
            if result["ok"]:
                prepared = None
                if "prepared" in result:
                    from knowledge.preparation import prepared_from_json

                    prepared = prepared_from_json(result["prepared"])
                return _document(result["document"]), prepared
            if "limit" in result:
                self.stop()  # whatever it holds after a MemoryError is not worth keeping
                raise ParseError(self._limit_reason("memory"))
            if "crash" in result:
                logger.warning("parser error on %r: %s", filename, result["crash"])
                raise ParseError(f"Unexpected error while reading the file ({result['crash']}).")
            raise ParseError(result["reason"])

    def _answer(self, process: subprocess.Popen, *, on_stage=None) -> bytes | None:
        """The child's answer; stage messages before it move the deadline to the next stage's."""
        deadline = time.monotonic() + self.limits.wall_seconds
        fd = process.stdout.fileno()
        while True:
            chunks, needed, header = [], _HEADER.size, None
            while needed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.timed_out = True
                    return None
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    continue
                piece = os.read(fd, min(needed, 1 << 20))
                if not piece:
                    return None  # the child died
                chunks.append(piece)
                needed -= len(piece)
                if needed == 0 and header is None:
                    header = b"".join(chunks)
                    chunks, needed = [], _HEADER.unpack(header)[0]
            message = b"".join(chunks)
            if not message.startswith(b'{"stage"'):
                return message
            self.stage = json.loads(message)["stage"]
            deadline = time.monotonic() + self.limits.chunking_seconds
            if on_stage is not None:
                on_stage(self.stage)

    def _death_reason(self, process: subprocess.Popen) -> str:
        if self.timed_out:
            self.timed_out = False
            return self._limit_reason("wall")
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if code == -signal.SIGXCPU:
            return self._limit_reason("cpu")
        if code is not None and code < 0:
            return (
                f"The file crashed the parser (signal {-code}); it may be malformed or built to exhaust "
                f"resources (limits: {self.limits.memory_mb} MB, {self.limits.cpu_seconds} s CPU)."
            )
        return self._limit_reason("memory")

    def _limit_reason(self, which: str) -> str:
        chunking = getattr(self, "stage", "parsing") == "chunking"
        cpu = self.limits.chunking_seconds if chunking else self.limits.cpu_seconds
        wall = self.limits.chunking_seconds if chunking else self.limits.wall_seconds
        limit = {
            "memory": f"more than {self.limits.memory_mb} MB of memory",
            "cpu": f"more than {cpu:g} s of CPU time",
            "wall": f"longer than {wall:g} s",
        }[which]
        what = "Splitting the file's text into chunks" if chunking else "Reading the file"
        return f"{what} needed {limit}, so it was stopped. Split it or simplify it, then upload again."


_sandbox: Sandbox | None = None
_sandbox_pid: int | None = None


def sandbox_for(limits: Limits) -> Sandbox:
    """This process's sandbox (its child is started on first use)."""
    global _sandbox, _sandbox_pid
    if _sandbox is None or _sandbox_pid != os.getpid() or _sandbox.limits != limits:
        if _sandbox is not None and _sandbox_pid == os.getpid():
            _sandbox.stop()
        _sandbox, _sandbox_pid = Sandbox(limits), os.getpid()
    return _sandbox


def sandbox_parse(data: bytes, filename: str, limits: Limits) -> ParsedDocument:
    """Parse in this process's sandbox child."""
    return sandbox_for(limits).parse(data, filename)


if __name__ == "__main__":
    _child(int(sys.argv[1]))
