"""Token-aware chunking that keeps paragraphs and sentences whole where it can."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from knowledge.parsers import Block

TokenCounter = Callable[[Sequence[str]], list[int]]

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]?[ \t]+(?=[\"'(\[]?[A-Z0-9À-Ý])")


@dataclass
class ChunkDraft:
    text: str
    token_count: int
    page: int | None = None
    page_end: int | None = None
    heading_path: tuple[str, ...] = ()
    kind: str = "text"
    metadata: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    normalised = " ".join(text.lower().split())
    return hashlib.sha256(normalised.encode()).hexdigest()


@dataclass
class _Piece:
    text: str
    tokens: int
    page: int | None
    joiner: str  # what separates it from the piece before: paragraph, line or sentence break


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_blocks(
    blocks: Sequence[Block], *, count_tokens: TokenCounter, max_tokens: int = 256, overlap: int = 32
) -> list[ChunkDraft]:
    """Atomic blocks (FAQ rows, records, Q&A pairs) become one chunk each when they fit; other
    blocks sharing a heading path are packed together, sentence by sentence."""
    if max_tokens < 16:
        raise ValueError("max_tokens must be at least 16")
    overlap = max(0, min(overlap, max_tokens // 2 - 1))
    drafts: list[ChunkDraft] = []
    group: list[Block] = []

    def flush():
        if group:
            drafts.extend(_pack(group, count_tokens, max_tokens, overlap))
            group.clear()

    for block in blocks:
        if block.atomic:
            flush()
            drafts.extend(_pack([block], count_tokens, max_tokens, overlap))
            continue
        if group and (group[-1].heading_path != block.heading_path or group[-1].kind != block.kind):
            flush()
        group.append(block)
    flush()
    return drafts


def _pieces(blocks: Sequence[Block], count_tokens: TokenCounter, max_tokens: int) -> list[_Piece]:
    raw: list[tuple[str, int | None, str]] = []
    for block in blocks:
        for paragraph in re.split(r"\n\s*\n", block.text):
            joiner = "\n\n"
            for line in paragraph.split("\n"):
                if not line.strip():
                    continue
                for sentence in split_sentences(line):
                    raw.append((sentence, block.page, joiner))
                    joiner = " "
                joiner = "\n"
    counts = count_tokens([text for text, _, _ in raw]) if raw else []
    pieces: list[_Piece] = []
    for (text, page, joiner), tokens in zip(raw, counts):
        if tokens <= max_tokens:
            pieces.append(_Piece(text, tokens, page, joiner))
        else:
            pieces.extend(_split_long(text, page, joiner, count_tokens, max_tokens))
    return pieces


def _split_long(text: str, page, joiner: str, count_tokens: TokenCounter, max_tokens: int) -> list[_Piece]:
    """A sentence longer than a chunk: cut at word boundaries into windows that fit."""
    words = text.split()
    per_word = count_tokens(words)
    pieces, current, current_tokens = [], [], 0
    for word, tokens in zip(words, per_word):
        tokens = max(tokens, 1)
        if current and current_tokens + tokens > max_tokens:
            pieces.append(_Piece(" ".join(current), current_tokens, page, " " if pieces else joiner))
            current, current_tokens = [], 0
        if tokens > max_tokens:  # a single absurd "word": hard cut by characters
            word = word[: max_tokens * 2]
            tokens = min(tokens, max_tokens)
        current.append(word)
        current_tokens += tokens
    if current:
        pieces.append(_Piece(" ".join(current), current_tokens, page, " " if pieces else joiner))
    return pieces


def _pack(blocks: Sequence[Block], count_tokens: TokenCounter, max_tokens: int, overlap: int) -> list[ChunkDraft]:
    first = blocks[0]
    pieces = _pieces(blocks, count_tokens, max_tokens)
    if not pieces:
        return []
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    used = 0
    for piece in pieces:
        # Joining pieces adds no tokens for a WordPiece/BPE tokenizer beyond the pieces' own,
        # so the sum is a safe upper bound checked again below.
        if current and used + piece.tokens > max_tokens:
            chunks.append(current)
            carried = _overlap_tail(current, overlap)
            if sum(p.tokens for p in carried) + piece.tokens > max_tokens:
                carried = []
            current, used = list(carried), sum(p.tokens for p in carried)
        current.append(piece)
        used += piece.tokens
    if current and (not chunks or any(p not in chunks[-1] for p in current)):
        chunks.append(current)

    texts = [_join(chunk) for chunk in chunks]
    exact = count_tokens(texts)
    drafts = []
    for chunk, text, tokens in zip(chunks, texts, exact):
        pages = [p.page for p in chunk if p.page is not None]
        drafts.append(
            ChunkDraft(
                text=text,
                token_count=tokens,
                page=pages[0] if pages else None,
                page_end=pages[-1] if pages else None,
                heading_path=first.heading_path,
                kind=first.kind,
                metadata=dict(first.metadata) if len(blocks) == 1 else {},
            )
        )
    return drafts


def _overlap_tail(chunk: list[_Piece], overlap: int) -> list[_Piece]:
    tail, total = [], 0
    for piece in reversed(chunk):
        if total + piece.tokens > overlap:
            break
        tail.insert(0, piece)
        total += piece.tokens
    return tail


def _join(pieces: list[_Piece]) -> str:
    return "".join(piece.text if i == 0 else piece.joiner + piece.text for i, piece in enumerate(pieces))
