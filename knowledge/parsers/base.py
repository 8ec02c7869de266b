from __future__ import annotations

import re
from dataclasses import dataclass, field


class ParseError(Exception):
    """The file cannot be ingested; ``reason`` is shown to the person who uploaded it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Block:
    """A run of text with where it came from. ``atomic`` blocks (FAQ rows, records, Q&A pairs)
    become one chunk each when they fit. ``context`` says what the text is about when the parser
    knows better than the document's title and headings (the question an FAQ answer answers, a
    record's title): every chunk of the block is embedded with it."""

    text: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    kind: str = "text"
    metadata: dict = field(default_factory=dict)
    atomic: bool = False
    context: str = ""


@dataclass
class Turn:
    role: str  # user | assistant | system
    content: str
    speaker: str = ""


@dataclass
class ParsedConversation:
    turns: list[Turn]
    external_id: str = ""
    metadata: dict = field(default_factory=dict)

    def qa_pairs(self) -> list[tuple[int, int]]:
        """(question turn, answer turn) indexes: each user turn with the agent turn that follows."""
        pairs = []
        for i, turn in enumerate(self.turns):
            if turn.role != "user":
                continue
            for j in range(i + 1, len(self.turns)):
                if self.turns[j].role == "assistant":
                    pairs.append((i, j))
                    break
                if self.turns[j].role == "user":
                    break
        return pairs


@dataclass
class ParsedDocument:
    detected_type: str
    blocks: list[Block] = field(default_factory=list)
    conversations: list[ParsedConversation] = field(default_factory=list)
    page_count: int | None = None
    warnings: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


# Every Unicode line break becomes "\n"; every other whitespace character (em spaces, ideographic
# spaces, NBSP, tabs, ...) and run of them a single space; invisible format characters go. After
# this no text holds a run of whitespace, which no pattern downstream then has to backtrack over.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INVISIBLE = re.compile("[\x00\u200b\u200c\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n(?: ?\n)+")


def normalise_whitespace(text: str) -> str:
    """Whitespace as described above, lines stripped, at most one blank line in a row."""
    text = _SPACES.sub(" ", _INVISIBLE.sub("", _LINE_BREAKS.sub("\n", text)))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub(lambda m: "\n\n" if m.group(0).count("\n") > 1 else "\n", text).strip()


def clean_text(text: str) -> str:
    return normalise_whitespace(text)


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
