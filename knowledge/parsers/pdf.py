from __future__ import annotations

import io
import logging
import re
from collections import Counter

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

from knowledge.parsers import guards
from knowledge.parsers.base import Block, ParsedDocument, ParseError, clean_text

logger = logging.getLogger(__name__)

_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")
_PAGE_NUMBER = re.compile(r"^(page\s*)?\d{1,4}(\s*(of|/)\s*\d{1,4})?$", re.I)


def parse_pdf(data: bytes) -> ParsedDocument:
    try:
        reader = PdfReader(io.BytesIO(data))
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError) as exc:
        raise ParseError(f"The PDF is corrupt and cannot be read ({exc}).") from None
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except (NotImplementedError, PdfReadError, ValueError) as exc:
            raise ParseError(f"The PDF is encrypted with a method we cannot open ({exc}).") from None
        if not opened:
            raise ParseError("The PDF is password-protected: remove the password and upload it again.")
    try:
        pages = reader.pages
        page_count = len(pages)
        if page_count > guards.PDF_MAX_PAGES:
            raise ParseError(f"The PDF has {page_count:,} pages; at most {guards.PDF_MAX_PAGES:,} are accepted.")
    except FileNotDecryptedError:
        raise ParseError("The PDF is password-protected: remove the password and upload it again.") from None
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ParseError(f"The PDF is corrupt: its page tree cannot be read ({exc}).") from None
    if page_count == 0:
        raise ParseError("The PDF has no pages.")

    warnings: list[str] = []
    texts: list[str] = []
    unreadable = 0
    for page in pages:
        try:
            texts.append(clean_text(page.extract_text() or ""))
        except Exception as exc:  # pypdf raises many types on damaged content streams
            logger.info("pdf page text extraction failed: %s", exc)
            unreadable += 1
            texts.append("")
    empty = sum(1 for t in texts if len(re.sub(r"\W", "", t)) < 3)
    if empty == page_count:
        raise ParseError("No extractable text (scanned PDF; OCR is not supported).")
    if unreadable:
        warnings.append(f"{unreadable} of {page_count} pages could not be read (damaged content).")
    if empty:
        warnings.append(f"{round(100 * empty / page_count)}% of pages had no text.")

    texts, removed = _strip_running_lines(texts)
    if removed:
        warnings.append(f"Removed {removed} repeated header/footer lines.")
    headings = _outline_headings(reader, page_count)
    blocks = []
    for number, text in enumerate(texts, start=1):
        if not text:
            continue
        text = _HYPHEN_BREAK.sub(r"\1\2", text)
        blocks.append(Block(text=text, page=number, heading_path=headings.get(number, ())))
    return ParsedDocument(
        detected_type="pdf",
        blocks=blocks,
        page_count=page_count,
        warnings=warnings,
        stats={"pages": page_count, "pages_without_text": empty},
    )


def _strip_running_lines(texts: list[str]) -> tuple[list[str], int]:
    """Drop page numbers and lines repeated at the top or bottom of most pages."""
    pages_with_text = [t for t in texts if t]
    counts: Counter[str] = Counter()
    for text in pages_with_text:
        lines = [line for line in text.split("\n") if line.strip()]
        edge = set(lines[:2] + lines[-2:])
        counts.update(re.sub(r"\d+", "#", line) for line in edge)
    threshold = max(3, int(0.5 * len(pages_with_text)) + 1)
    running = {line for line, n in counts.items() if n >= threshold}
    removed = 0
    result = []
    for text in texts:
        lines = text.split("\n")
        kept = []
        for i, line in enumerate(lines):
            at_edge = i < 2 or i >= len(lines) - 2
            if at_edge and (re.sub(r"\d+", "#", line) in running or _PAGE_NUMBER.match(line.strip() or "x")):
                removed += 1
                continue
            kept.append(line)
        result.append("\n".join(kept).strip())
    return result, removed


def _outline_headings(reader: PdfReader, page_count: int) -> dict[int, tuple[str, ...]]:
    """Page number -> heading path, from the PDF's bookmarks when it has usable ones."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def walk(items, path):
        last = None
        for item in items:
            if isinstance(item, list):
                if last is not None:
                    walk(item, last)
                continue
            try:
                title = str(item.title).strip()
                number = reader.get_destination_page_number(item) + 1
            except Exception:
                continue
            if title and 1 <= number <= page_count:
                last = path + (title[:200],)
                starts.append((number, last))

    try:
        walk(reader.outline, ())
    except Exception:
        return {}
    if not starts:
        return {}
    starts.sort(key=lambda s: s[0])
    headings, current, index = {}, (), 0
    for number in range(1, page_count + 1):
        while index < len(starts) and starts[index][0] <= number:
            current = starts[index][1]
            index += 1
        if current:
            headings[number] = current
    return headings
