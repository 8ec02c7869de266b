"""Ingestion of the real files and datasets in ../shared (skipped in a clone without it).
Celery is eager: the ingestion task function runs in the test process."""

import csv
import json

import pytest

from knowledge.models import Conversation, QAPair
from tests.conftest import DOCS, as_tenant, ingest, shared_path, shared_subset, shared_upload

pytestmark = [pytest.mark.django_db, pytest.mark.shared]

PASSWORD_PROTECTED = [
    "pdfplumber_tests/password-example.pdf",
    "pypdf_resources/encrypted-file.pdf",
    "pypdf_resources/crazyones-encrypted-256.pdf",
    "pypdf_resources/encryption/r2-user-password.pdf",
    "pypdf_resources/encryption/r3-user-password.pdf",
    "pypdf_resources/encryption/r4-user-password.pdf",
    "pypdf_resources/encryption/r4-aes-user-password.pdf",
    "pypdf_resources/encryption/r6-both-passwords.pdf",
]
EMPTY_PASSWORD = [
    "pypdf_resources/encryption/r2-empty-password.pdf",
    "pypdf_resources/encryption/r3-empty-password.pdf",
    "pypdf_resources/encryption/r4-owner-password.pdf",
    "pypdf_resources/encryption/r5-user-password.pdf",
    "pypdf_resources/encryption/r6-user-password.pdf",
    "pdfplumber_tests/pr-138-example.pdf",
]
NO_TEXT = [
    "pdfplumber_tests/issue-203-decimalize.pdf",
    "pdfplumber_tests/issue-297-example.pdf",
    "pypdf_resources/encrypted_doc_no_id.pdf",
]


def doc(path: str):
    return shared_upload("fixtures", "documents", *path.split("/"))


@pytest.mark.parametrize("path", PASSWORD_PROTECTED)
def test_password_protected_pdfs_fail(bundle, path):
    document = ingest(bundle, doc(path))
    assert document.status == "failed"
    assert document.error == "The PDF is password-protected: remove the password and upload it again."


@pytest.mark.parametrize("path", EMPTY_PASSWORD)
def test_pdfs_that_open_with_an_empty_password_are_read(bundle, path):
    document = ingest(bundle, doc(path))
    assert document.status == "ready", document.error
    assert document.chunk_count >= 1


@pytest.mark.parametrize("path", NO_TEXT)
def test_image_only_pdfs_fail_as_scanned(bundle, path):
    document = ingest(bundle, doc(path))
    assert (document.status, document.error) == ("failed", "No extractable text (scanned PDF; OCR is not supported).")


def test_broken_and_odd_files(bundle):
    from knowledge.services import document_create
    from tenants.errors import UploadRejected

    with pytest.raises(UploadRejected, match="the file is empty"), as_tenant(bundle):
        document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=doc("pdfplumber_tests/empty.pdf"))
    zipped = ingest(bundle, doc("pdfplumber_tests/issue-948.zip"))
    assert zipped.error == "ZIP archives are not supported; extract the files and upload them one by one."
    blank_docx = ingest(bundle, doc("python-docx_tests/doc-default.docx"))
    assert blank_docx.error == "The Word document contains no text."
    # Damaged but readable PDFs are ingested
    for path in (
        "pdfplumber_tests/malformed-from-issue-932.pdf",
        "pypdf_resources/issue-297.pdf",
        "pypdf_resources/outlines-with-invalid-destinations.pdf",
    ):
        document = ingest(bundle, doc(path))
        assert document.status in ("ready", "failed")
        assert document.status == "ready" or document.error  # never a silent failure


def test_long_pdf_records_page_numbers(bundle):
    document = ingest(bundle, doc("pdfplumber_tests/chelsea_pdta.pdf"), content_type="document")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        assert document.page_count == 65
        pages = list(document.chunks.order_by("position").values_list("page", flat=True))
        assert pages[0] == 1 and pages == sorted(pages) and pages[-1] >= 60
        assert "2% of pages had no text." in document.quality["warnings"]
        assert document.language == "fr"
        assert max(document.chunks.values_list("token_count", flat=True)) <= 254


def test_scanned_pdf_with_ocr_layer_is_read(bundle):
    document = ingest(bundle, doc("pypdf_resources/Seige_of_Vicksburg_Sample_OCR.pdf"))
    with as_tenant(bundle):
        assert document.status == "ready" and document.page_count == 6
        assert set(document.chunks.values_list("page", flat=True)) <= set(range(1, 7))


def test_pdf_outline_becomes_heading_paths(bundle):
    document = ingest(bundle, doc("pdfplumber_tests/issue-982-example.pdf"))
    with as_tenant(bundle):
        assert document.status == "ready"
        headings = {tuple(h) for h in document.chunks.values_list("heading_path", flat=True) if h}
        assert ("II Basics of Machine Learning",) in headings or any(
            h[0] == "II Basics of Machine Learning" for h in headings
        ), headings


def test_docx_tables_and_header_footer(bundle):
    tables = ingest(bundle, doc("python-docx_tests/tbl-having-applied-style.docx"))
    assert tables.status == "ready", tables.error
    assert tables.quality["stats"]["tables"] == 3
    with as_tenant(bundle):
        table = tables.chunks.filter(kind="table").order_by("position").first()
    assert table.text.startswith("foobar: foo; barfoo: bar\nfoobar: bar; barfoo: foo")
    # a document of single-letter cells has nothing worth searching
    trivial = ingest(bundle, doc("python-docx_tests/tbl-props.docx"))
    assert trivial.error == "No usable text: every part of the file was empty or boilerplate."
    headers = ingest(bundle, doc("python-docx_tests/hdr-header-footer.docx"))
    with as_tenant(bundle):
        kinds = set(headers.chunks.values_list("kind", flat=True))
    assert {"header", "footer"} <= kinds


def test_docx_heading_styles(bundle):
    document = ingest(bundle, doc("python-docx_tests/par-known-styles.docx"))
    with as_tenant(bundle):
        assert document.status == "ready"
        assert any(document.chunks.values_list("heading_path", flat=True))


def test_every_fixture_document_ends_ready_or_failed_with_a_reason(bundle):
    """All 130 real PDF/DOCX files: none crashes the pipeline, each failure says why."""
    from tenants.errors import UploadRejected

    paths = sorted(p for p in DOCS.rglob("*") if p.suffix in (".pdf", ".docx", ".zip"))
    if not paths:
        pytest.skip("needs ../shared/fixtures/documents")
    outcomes = {}
    for path in paths:
        relative = str(path.relative_to(DOCS))
        try:
            document = ingest(bundle, doc(relative))
        except UploadRejected as exc:
            outcomes[relative] = ("rejected", exc.message)
            continue
        outcomes[relative] = (document.status, document.error)
    assert all(status in ("ready", "failed", "rejected") for status, _ in outcomes.values())
    assert all(reason for status, reason in outcomes.values() if status != "ready")
    failures = {path: reason for path, (status, reason) in outcomes.items() if status != "ready"}
    assert not [r for r in failures.values() if r.startswith("Unexpected error")], failures
    # 35 files are truly unusable: encrypted, image-only, blank or trivial test documents, a zip
    assert len(failures) == 35, failures
    assert sum(1 for r in failures.values() if "password-protected" in r) == len(PASSWORD_PROTECTED)


def test_covid_faq_csv_one_chunk_per_row_with_html_answers(bundle):
    path = shared_path("datasets", "faq", "covid_faq_deepset", "faq_covidbert.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    document = ingest(
        bundle, shared_upload("datasets", "faq", "covid_faq_deepset", "faq_covidbert.csv"), content_type="faq"
    )
    assert document.status == "ready", document.error
    assert document.detected_type == "csv-faq"
    with as_tenant(bundle):
        faq_rows = {c.metadata["row"] for c in document.chunks.all()}
        first = document.chunks.get(position=0)
    assert faq_rows == set(range(2, len(rows) + 2))  # every row present (long answers may split)
    assert first.text.startswith("Q: " + rows[0]["question"])
    assert first.metadata["source"] == rows[0]["source"] and "answer_html" not in first.metadata


def test_multilingual_tsv_and_banking_csv(bundle):
    faq = ingest(
        bundle, shared_subset("datasets", "faq", "covid_faq_deepset", "faq_200327.tsv", items=150), content_type="faq"
    )
    assert faq.status == "ready" and faq.detected_type == "csv-faq"
    with as_tenant(bundle):
        languages = {c.metadata["lang"] for c in faq.chunks.all()}
    assert {"de", "en"} <= languages
    banking = ingest(bundle, shared_subset("datasets", "faq", "banking77", "test.csv", items=300))
    assert banking.status == "ready" and banking.detected_type == "csv"
    with as_tenant(bundle):
        assert banking.chunks.order_by("position").first().text.startswith("text: ")


@pytest.mark.parametrize(
    "name,conversations,pairs_at_least",
    [
        ("oasst_openai_chat.jsonl", 30, 30),
        ("oasst_sharegpt.json", 30, 30),
        ("abcd_openai_chat.jsonl", 3, 10),
        ("ubuntu_irc_threads.json", 40, 20),
        ("twcs_threads.json", 27, 10),
    ],
)
def test_chat_logs(bundle, name, conversations, pairs_at_least):
    upload = shared_subset("datasets", "chatlogs", "derived", name, items=conversations)
    document = ingest(bundle, upload, content_type="conversation")
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        assert Conversation.objects.filter(document=document).count() == conversations
        pairs = QAPair.objects.filter(conversation__document=document).count()
        assert pairs >= pairs_at_least
        assert document.chunks.filter(kind="qa").values("metadata__conversation").distinct().count() <= conversations


def test_sharegpt_and_openai_exports_of_the_same_chats_agree(bundle, other_bundle):
    a = ingest(bundle, shared_subset("datasets", "chatlogs", "derived", "oasst_sharegpt.json", items=25))
    b = ingest(other_bundle, shared_subset("datasets", "chatlogs", "derived", "oasst_openai_chat.jsonl", items=25))

    def qa(document, who):
        with as_tenant(who):
            return list(
                QAPair.objects.filter(conversation__document=document)
                .order_by("conversation__position", "question_turn")
                .values_list("question", "answer")
            )

    pairs = qa(a, bundle)
    assert len(pairs) >= 20 and pairs == qa(b, other_bundle)


def test_scifact_jsonl_records(bundle):
    path = shared_path("datasets", "scifact", "corpus.jsonl")
    lines = path.read_text().splitlines()[:80]
    from tests.conftest import make_upload

    document = ingest(bundle, make_upload("scifact.jsonl", "\n".join(lines)))
    with as_tenant(bundle):
        assert document.status == "ready", document.error
        ids = {c.metadata["_id"] for c in document.chunks.all()}
        assert ids == {json.loads(line)["_id"] for line in lines}
