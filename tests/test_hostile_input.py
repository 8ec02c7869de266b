"""Hostile files are refused before a parser touches them, each with a reason the uploader can
read; the job fails, nothing is stored, and normal files keep ingesting. Ingestion runs eagerly
in-process (the task function called directly)."""

import io
import re
import zipfile

import pytest

from knowledge.parsers import guards
from tests.conftest import as_tenant, build_docx, build_pdf, ingest, make_upload


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _docx_with_dtd() -> bytes:
    source = zipfile.ZipFile(io.BytesIO(build_docx(heading="Returns", paragraphs=["Send it back within 30 days."])))
    parts = {name: source.read(name) for name in source.namelist()}
    xml = parts["word/document.xml"]
    laughs = b'<!DOCTYPE w:document [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    parts["word/document.xml"] = re.sub(rb"(<\?xml[^>]*\?>)", lambda m: m.group(1) + laughs, xml, count=1)
    return _zip(parts)


def _hostile(name: str) -> bytes:
    if name == "bomb.docx":
        return _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b" " * (40 * 1024 * 1024)})
    if name == "traversal.docx":
        return _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>", "../../etc/cron.d/x": b"x"})
    if name == "laughs.docx":
        return _docx_with_dtd()
    if name == "deep.json":
        return b"[" * 200 + b"]" * 200
    if name == "nan.json":
        return b'[{"question": "How much?", "answer": NaN}]'
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("bomb.docx", "looks like a compression bomb"),
        ("traversal.docx", "unsafe part name"),
        ("laughs.docx", "declares a DTD or entities"),
        ("deep.json", "nested more than 64 levels deep"),
        ("nan.json", "contains NaN"),
    ],
)
def test_hostile_files_fail_with_a_reason_and_leave_the_rest(bundle, name, reason):
    document = ingest(bundle, make_upload(name, _hostile(name)))
    assert document.status == "failed" and reason in document.error, document.error
    with as_tenant(bundle):
        assert document.chunks.count() == 0 and document.jobs.get().status == "failed"
    good = ingest(bundle, make_upload("good.txt", "Our support line is open from nine to five on weekdays."))
    with as_tenant(bundle):
        assert good.status == "ready" and good.chunks.count() == 1


def test_row_and_page_caps(bundle, monkeypatch, settings):
    settings.PARSER_SANDBOX = False  # the patched caps live in this process, not in the sandbox child
    monkeypatch.setattr(guards, "JSON_MAX_CHARS", 1000)
    big_json = ingest(bundle, make_upload("big.json", '[{"question": "q?", "answer": "' + "a" * 2000 + '"}]'))
    assert big_json.status == "failed" and "The JSON is larger than" in big_json.error
    monkeypatch.setattr(guards, "CSV_MAX_ROWS", 10)
    monkeypatch.setattr(guards, "PDF_MAX_PAGES", 2)
    rows = "question,answer\n" + "".join(f"Question {i}?,Answer {i}.\n" for i in range(20))
    csv_doc = ingest(bundle, make_upload("many.csv", rows))
    assert csv_doc.status == "failed" and "more than 10 rows" in csv_doc.error
    pdf_doc = ingest(bundle, make_upload("long.pdf", build_pdf(["one page", "two pages", "three pages"])))
    assert pdf_doc.status == "failed" and "at most 2 are accepted" in pdf_doc.error
    ok = ingest(bundle, make_upload("ok.pdf", build_pdf(["A short manual page about returns."])))
    assert ok.status == "ready"


def test_a_normal_docx_still_passes_the_guards(bundle):
    document = ingest(bundle, make_upload("ok.docx", build_docx(heading="Returns", paragraphs=["Within 30 days."])))
    with as_tenant(bundle):
        assert document.status == "ready" and document.chunks.count() >= 1


# --- The parsing sandbox (knowledge/parsers/sandbox.py) -----------------------------------

BIG_CSV = "q,a\n" + "".join(f"question {i} about the order,answer {i} with several words\n" for i in range(300_000))


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"PARSER_MEMORY_MB": 200}, "more than 200 MB of memory"),
        ({"PARSER_CPU_SECONDS": 1}, "more than 1 s of CPU time"),
        ({"PARSER_WALL_SECONDS": 0.3}, "longer than 0.3 s"),
    ],
)
def test_a_file_past_the_parser_limits_fails_the_job_not_the_worker(bundle, settings, limits, reason):
    """The limits stop the child process that parses; this (the worker's) process goes on and
    the next file ingests."""
    for name, value in limits.items():
        setattr(settings, name, value)
    document = ingest(bundle, make_upload("big.csv", BIG_CSV), content_type="faq")
    assert document.status == "failed" and reason in document.error, document.error
    assert ingest(bundle, make_upload("ok.txt", "Returns are free within 30 days.")).status == "ready"


def test_a_parser_that_dies_is_replaced_and_what_it_parses_is_what_the_worker_would(bundle, settings):
    import os
    import signal

    from knowledge.parsers import parse_file
    from knowledge.parsers.sandbox import Limits, Sandbox

    sandbox = Sandbox(Limits(memory_mb=512, cpu_seconds=30, wall_seconds=30))
    data = build_docx(heading="Returns", paragraphs=["Send it back within 30 days."], table=[["a", "b"], ["1", "2"]])
    try:
        assert sandbox.parse(data, "returns.docx") == parse_file(data, "returns.docx")
        first = sandbox.process.pid
        os.kill(first, signal.SIGKILL)  # a parser crash, as seen from the worker
        sandbox.process.wait()
        assert sandbox.parse(data, "returns.docx").blocks  # a fresh child took over
        assert sandbox.process.pid != first
    finally:
        sandbox.stop()


def _hostile_corpus():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import hostile_corpus

    return hostile_corpus


def test_the_hostile_corpus_is_refused_with_reasons_and_stored_as_plain_data(bundle, settings):
    """Every file of bench/hostile_corpus.py (133: bombs, entity XML, PDF/JSON/CSV attacks, stalling input,
    polyglots, renamed executables, hostile names, prompt injection) through the upload service
    and the ingestion task (eager, in-process, parsing in the sandbox child): a refusal at upload
    or a failed job with a reason where the corpus says "refuse", a ready document where it says
    "accept"; nothing left unfinished, and the worker still ingests a normal file afterwards."""
    from django.test import TestCase

    from knowledge.models import Document
    from knowledge.services import document_create
    from tenants.errors import DomainError

    corpus = _hostile_corpus()
    outcomes, wrong = {}, []
    for name, data, expect in corpus.corpus():
        try:
            with TestCase.captureOnCommitCallbacks(execute=True):
                with as_tenant(bundle):  # the upload request's scope; the task then sets its own
                    created = document_create(
                        tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload(name, data)
                    )
            with as_tenant(bundle):
                document = Document.objects.get(pk=created.document.pk)
            outcome, reason = document.status, document.error
        except DomainError as exc:
            outcome, reason = "refused", exc.message
        outcomes[name] = (outcome, reason)
        refused = outcome in ("failed", "refused")
        if outcome not in ("ready", "failed", "refused") or (refused and not reason):
            wrong.append((name, outcome, reason))
        elif (expect == "refuse") != refused:
            wrong.append((name, expect, outcome, reason[:120]))
    assert not wrong, "\n".join(map(str, wrong))
    with as_tenant(bundle):
        injected = Document.objects.filter(tenant=bundle.tenant, original_filename="injection.txt").get()
        assert corpus.INJECTION in injected.chunks.get().text  # kept verbatim, as data
    assert ingest(bundle, make_upload("after.txt", "Refunds take five days.")).status == "ready"


# --- Input that would stall a worker (whitespace runs, backtracking patterns, slow chunking) ------


def test_every_unicode_whitespace_is_normalised_before_any_pattern():
    from knowledge.parsers.base import clean_text, normalise_whitespace

    spaces = "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
    assert clean_text(f"Refunds{spaces}take{spaces * 1000}five days.") == "Refunds take five days."
    assert clean_text("Shipping\u2028is free.\u2029\u0085\x0b\x0cReturns too.") == "Shipping\nis free.\n\nReturns too."
    assert clean_text("War\u200branty\ufeff lasts\x00 two years.") == "Warranty lasts two years."
    assert normalise_whitespace("a\n \n\n \nb") == "a\n\nb" and normalise_whitespace("a\nb") == "a\nb"


def test_no_pattern_backtracks_on_long_runs():
    """A digit, a million em spaces, a letter (and other runs) through every text pattern of the
    worker's side: each finishes at once. Run in a child process so that a pattern gone quadratic
    fails this test (killed at the timeout) instead of hanging the suite."""
    import subprocess
    import sys

    from django.conf import settings

    script = """
from knowledge.chunking import ChunkDraft, split_sentences
from knowledge.parsers.base import clean_text, paragraphs
from knowledge.parsers.tabular import html_to_text
from knowledge.parsers.text import parse_text
from knowledge.quality import drop_reason
run = "\\u2003" * 1_000_000
for text in ("1" + run + "a", "page 1" + run + "of" + run + "x", "(c)" + run, "." * 1_000_000 + "a"):
    drop_reason(ChunkDraft(text=text, token_count=1))
    split_sentences(text)
    paragraphs("\\n" + text)
html_to_text("<" * 1_000_000 + "x")
parse_text("# a" + " " * 1_000_000 + "b" + " " * 1_000_000 + "#\\n\\ntext", markdown=True)
clean_text("x" + run + "y")
print("done")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


@pytest.mark.parametrize(
    "name, data",
    [
        ("emspace-run.txt", ("1" + "\u2003" * 1_000_000 + "a").encode()),
        ("emspace-faq.csv", ('question,answer\nHow do I pay?,"1' + "\u2003" * 900_000 + 'By card."\n').encode()),
    ],
)
def test_a_million_em_spaces_reach_a_final_state(bundle, name, data):
    document = ingest(bundle, make_upload(name, data), content_type="faq")
    if name == "emspace-run.txt":  # nothing but a digit and a letter
        assert (document.status, document.error) == (
            "failed",
            "No usable text: every part of the file was empty or boilerplate.",
        )
    else:
        assert document.status == "ready", document.error
        with as_tenant(bundle):
            assert document.chunks.get().text == "Q: How do I pay?\nA: 1 By card."


@pytest.mark.parametrize("sandbox", [True, False])
def test_the_chunking_stage_has_a_time_limit_with_a_readable_reason(bundle, settings, sandbox):
    """A file whose parsing fits its limits but whose chunking does not (300,000 FAQ rows, with the
    chunking limit set low): the job fails at that stage, saying so; the next file ingests. In the
    sandbox's child the limit is CPU and wall time; in-process (PARSER_SANDBOX=0) a SIGALRM deadline."""
    settings.PARSER_SANDBOX = sandbox
    settings.INGESTION_CHUNKING_SECONDS = 1
    document = ingest(bundle, make_upload("big.csv", BIG_CSV), content_type="faq")
    assert document.status == "failed", document.error
    assert document.error.startswith("Splitting the file's text into chunks needed"), document.error
    assert "1 s" in document.error and "Split it or simplify it" in document.error
    with as_tenant(bundle):
        job = document.jobs.get()
        assert (job.status, job.stage, job.error) == ("failed", "chunking", document.error)
        assert not document.chunks.exists()
    assert ingest(bundle, make_upload("ok.txt", "Returns are free within 30 days.")).status == "ready"
