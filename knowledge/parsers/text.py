from __future__ import annotations

import re

from knowledge.parsers.base import Block, ParsedConversation, ParsedDocument, ParseError, clean_text, paragraphs
from knowledge.parsers.detect import TRANSCRIPT_LINE
from knowledge.parsers.structured import conversations_document, to_turns

_MD_HEADING = re.compile(r"(#{1,6}) (.*)")  # on a cleaned line (single spaces); closing #s stripped after


def parse_text(text: str, *, markdown: bool) -> ParsedDocument:
    text = clean_text(text)
    if not text:
        raise ParseError("The file contains no text.")
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    buffer: list[str] = []

    def flush():
        body = "\n".join(buffer).strip()
        buffer.clear()
        for paragraph in paragraphs(body):
            blocks.append(Block(text=paragraph, heading_path=tuple(t for _, t in stack)))

    for line in text.split("\n"):
        match = _MD_HEADING.fullmatch(line) if markdown else None
        title = match.group(2).rstrip("#").rstrip() if match else ""
        if title:
            flush()
            level = len(match.group(1))
            stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, title[:200])]
        else:
            buffer.append(line)
    flush()
    if not blocks:
        raise ParseError("The file contains only headings and no text.")
    return ParsedDocument(detected_type="markdown" if markdown else "text", blocks=blocks)


def parse_transcript(text: str) -> ParsedDocument:
    """``Speaker: text`` lines; a blank line or a '---' line starts a new conversation."""
    conversations: list[list[dict]] = [[]]
    for line in clean_text(text).split("\n"):
        if not line.strip() or line.strip().startswith("---"):
            if conversations[-1]:
                conversations.append([])
            continue
        match = TRANSCRIPT_LINE.match(line)
        if match:
            conversations[-1].append({"speaker": match.group(1).strip(), "content": match.group(2).strip()})
        elif conversations[-1]:
            conversations[-1][-1]["content"] += "\n" + line.strip()
    parsed = [ParsedConversation(turns=to_turns(c)) for c in conversations if c]
    return conversations_document(parsed, "transcript")
