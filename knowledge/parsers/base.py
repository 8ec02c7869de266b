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
    become one chunk each when they fit."""

    text: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    kind: str = "text"
    metadata: dict = field(default_factory=dict)
    atomic: bool = False


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


_WS = re.compile(r"[ \t\u00a0]+")


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
