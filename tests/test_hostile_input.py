"""Hostile files are refused before a parser touches them, each with a reason the uploader can
read; the job fails, nothing is stored, and normal files keep ingesting. Ingestion runs eagerly
in-process (the task function called directly)."""

import io
import re
import zipfile

import pytest

from knowledge.parsers import guards
from tests.conftest import build_docx, build_pdf, ingest, make_upload


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
    assert document.chunks.count() == 0 and document.jobs.get().status == "failed"
    good = ingest(bundle, make_upload("good.txt", "Our support line is open from nine to five on weekdays."))
    assert good.status == "ready" and good.chunks.count() == 1


def test_row_and_page_caps(bundle, monkeypatch):
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
    assert document.status == "ready" and document.chunks.count() >= 1
