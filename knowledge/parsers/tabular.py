"""CSV: FAQ tables become one chunk per row; other tables are read row by row with their header."""

from __future__ import annotations

import csv
import html
import io
import re

from knowledge.parsers import guards
from knowledge.parsers.base import Block, ParsedDocument, ParseError

QUESTION_COLUMNS = ("question", "questions", "q", "query", "faq", "faq_question", "title", "prompt")
ANSWER_COLUMNS = ("answer", "answers", "a", "response", "reply", "faq_answer", "answer_text", "content", "answer_html")
MAX_FIELD = 1_000_000

_TAG = re.compile(r"<[^<>]+>")  # stops at the next "<": linear on "<<<<..." too


def html_to_text(value: str) -> str:
    value = re.sub(r"(?i)<br\s*/?>|</p>|</li>|</h\d>", "\n", value)
    return re.sub(r"\n{3,}", "\n\n", html.unescape(_TAG.sub("", value))).strip()


def find_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    normalised = {c.strip().lower().replace(" ", "_"): c for c in columns if c}
    for name in candidates:
        if name in normalised:
            return normalised[name]
    return None


def parse_csv(text: str) -> ParsedDocument:
    csv.field_size_limit(MAX_FIELD)
    sample = text[:64_000]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        records = []
        for record in reader:
            records.append(record)
            if len(records) > guards.CSV_MAX_ROWS:
                raise ParseError(f"The CSV has more than {guards.CSV_MAX_ROWS:,} rows; split it into smaller files.")
    except csv.Error as exc:
        raise ParseError(f"The CSV cannot be read: {exc}.") from None
    if len(columns) < 1 or not records:
        raise ParseError("The CSV has a header but no rows.")
    question = find_column(columns, QUESTION_COLUMNS)
    answer = find_column(columns, ANSWER_COLUMNS)
    if question and answer and question != answer:
        return _faq(records, columns, question, answer)
    return _table(records, columns)


def _cell(value) -> str:
    if isinstance(value, list):  # extra cells beyond the header
        value = " ".join(v for v in value if v)
    return (value or "").strip()


def _faq(records, columns, question_col, answer_col) -> ParsedDocument:
    html_col = find_column(columns, ("answer_html",))
    blocks, skipped = [], 0
    for number, record in enumerate(records, start=2):
        record = {(k or "").strip(): _cell(v) for k, v in record.items()}
        q, a = record.get(question_col.strip(), ""), record.get(answer_col.strip(), "")
        if answer_col == html_col or (not a and html_col):
            a = html_to_text(a or record.get(html_col, ""))
        if not q or not a:
            skipped += 1
            continue
        metadata = {k: v for k, v in record.items() if k not in (question_col, answer_col, html_col) and v}
        metadata["row"] = number
        blocks.append(
            Block(
                text=f"Q: {q}\nA: {a}",
                kind="faq",
                metadata=metadata,
                atomic=True,
                heading_path=(q[:200],),
                context=f"Q: {q}",
            )
        )
    warnings = [f"{skipped} rows without a question or answer were skipped."] if skipped else []
    if not blocks:
        raise ParseError("The FAQ table has no rows with both a question and an answer.")
    return ParsedDocument(detected_type="csv-faq", blocks=blocks, warnings=warnings, stats={"rows": len(records)})


def _table(records, columns) -> ParsedDocument:
    blocks = []
    for number, record in enumerate(records, start=2):
        pairs = [f"{(k or '').strip()}: {_cell(v)}" for k, v in record.items() if _cell(v)]
        if pairs:
            blocks.append(Block(text="; ".join(pairs), kind="row", metadata={"row": number}))
    if not blocks:
        raise ParseError("The CSV rows are all empty.")
    return ParsedDocument(detected_type="csv", blocks=blocks, stats={"rows": len(records), "columns": columns})
