from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph

from knowledge.parsers.base import Block, ParsedDocument, ParseError, clean_text
from knowledge.parsers.guards import ooxml_guard

_HEADING = re.compile(r"^(heading|title)\s*(\d*)$", re.I)


def parse_docx(data: bytes) -> ParsedDocument:
    ooxml_guard(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ParseError(f"The Word document is corrupt and cannot be opened ({exc}).") from None
    except Exception as exc:  # lxml errors on damaged XML parts
        raise ParseError(f"The Word document is damaged ({type(exc).__name__}).") from None

    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    tables = 0
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            text = clean_text(item.text)
            if not text:
                continue
            level = _heading_level(item)
            if level is not None:
                stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, text[:200])]
                continue
            blocks.append(Block(text=text, heading_path=tuple(t for _, t in stack)))
        elif isinstance(item, Table):
            tables += 1
            rows = _table_rows(item)
            if rows:
                blocks.append(
                    Block(
                        text="\n".join(rows),
                        heading_path=tuple(t for _, t in stack),
                        kind="table",
                        metadata={"table": tables},
                    )
                )
    header_footer = _headers_and_footers(document)
    for label, texts in header_footer.items():
        if texts:
            blocks.append(Block(text="\n".join(texts), heading_path=(label,), kind=label.lower()))
    if not blocks:
        raise ParseError("The Word document contains no text.")
    return ParsedDocument(detected_type="docx", blocks=blocks, stats={"tables": tables})


def _heading_level(paragraph: Paragraph) -> int | None:
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, AttributeError):
        return None
    match = _HEADING.match(name or "")
    if not match:
        return None
    return 0 if match.group(1).lower() == "title" else int(match.group(2) or 1)


def _cell_text(cell, depth: int = 0) -> str:
    """A cell's paragraphs and the text of tables nested in it (forms put tables in cells; the XML
    parser's depth limit bounds the nesting)."""
    parts: list[str] = []
    for item in cell.iter_inner_content():
        if isinstance(item, Paragraph):
            parts.append(item.text)
        elif isinstance(item, Table) and depth < 100:
            seen: dict[int, object] = {}  # holds the elements, so their ids stay theirs
            for row in item.rows:
                for inner in row.cells:
                    if id(inner._tc) not in seen:  # a merged cell appears once per grid column
                        seen[id(inner._tc)] = inner._tc
                        parts.append(_cell_text(inner, depth + 1))
    return " ".join(clean_text(" ".join(parts)).split())


def _table_rows(table: Table) -> list[str]:
    """Rows as 'Header: value; ...' when the first row looks like a header, else 'a | b'."""
    try:
        grid = [[_cell_text(c) for c in row.cells] for row in table.rows]
    except (IndexError, ValueError, AttributeError):
        return []
    grid = [row for row in grid if any(row)]
    if not grid:
        return []
    header = grid[0]
    header_like = len(grid) > 1 and all(header) and len(set(header)) == len(header)
    if not header_like:
        return [" | ".join(_dedupe_merged(row)) for row in grid]
    lines = []
    for row in grid[1:]:
        pairs = [f"{h}: {v}" for h, v in zip(header, row) if v]
        if pairs:
            lines.append("; ".join(pairs))
    return lines


def _dedupe_merged(row: list[str]) -> list[str]:
    out: list[str] = []
    for value in row:
        if value and (not out or out[-1] != value):
            out.append(value)
    return out


def _headers_and_footers(document) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"Header": [], "Footer": []}
    for section in document.sections:
        for label, parts in (
            ("Header", (section.header, section.first_page_header, section.even_page_header)),
            ("Footer", (section.footer, section.first_page_footer, section.even_page_footer)),
        ):
            for part in parts:
                try:
                    if part.is_linked_to_previous:
                        continue
                    texts = [clean_text(p.text) for p in part.paragraphs]
                except (AttributeError, KeyError, ValueError):
                    continue
                for text in texts:
                    if text and text not in found[label]:
                        found[label].append(text)
    return found
