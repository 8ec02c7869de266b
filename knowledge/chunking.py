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
    context: str = ""  # what the chunk is about, embedded with it (see embedding_text)

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    normalised = " ".join(text.lower().split())
    return hashlib.sha256(normalised.encode()).hexdigest()


def embedding_text(text: str, context: str | None) -> str:
    """What is embedded for a chunk: its context (the FAQ question, the document's title and
    headings) on a line before its text, unless the text already begins with it (the first chunk
    of an FAQ row). The chunk's own text is stored and cited as it is."""
    if not context or text.startswith(context):
        return text
    return f"{context}\n{text}"


def input_hash(text: str) -> str:
    """Digest of an embedding's input (kept beside the vector: a changed input is re-embedded).
    Must equal ``left(encode(sha256(convert_to(text, 'UTF8')), 'hex'), 16)`` in SQL."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


CONTEXT_MAX_TOKENS = 64


@dataclass
class _Piece:
    text: str
    tokens: int
    page: int | None
    joiner: str  # what separates it from the piece before: paragraph, line or sentence break


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_blocks(
    blocks: Sequence[Block],
    *,
    count_tokens: TokenCounter,
    max_tokens: int = 256,
    overlap: int = 32,
    context_of: Callable[[Block], str] | None = None,
    model_max: int | None = None,
) -> list[ChunkDraft]:
    """Atomic blocks (FAQ rows, records, Q&A pairs) become one chunk each when they fit; other
    blocks sharing a heading path are packed together, sentence by sentence. With ``context_of``
    each chunk carries its block's context, and its text leaves room for it within ``model_max``
    tokens (what the model reads: context, a line break, the text)."""
    if max_tokens < 16:
        raise ValueError("max_tokens must be at least 16")
    drafts: list[ChunkDraft] = []
    group: list[Block] = []

    def pack(members: list[Block]) -> None:
        context = _bounded_context(context_of(members[0]), count_tokens) if context_of else ""
        budget = max_tokens
        if context and model_max:
            budget = min(max_tokens, model_max - count_tokens([context])[0] - 1)
        budget = max(budget, 16)
        packed = _pack(members, count_tokens, budget, max(0, min(overlap, budget // 2 - 1)))
        for draft in packed:
            draft.context = context
        drafts.extend(packed)

    def flush():
        if group:
            pack(list(group))
            group.clear()

    for block in blocks:
        if block.atomic:
            flush()
            pack([block])
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


def _bounded_context(context: str, count_tokens: TokenCounter) -> str:
    """At most CONTEXT_MAX_TOKENS tokens of the context (cut at a word), so the text keeps room."""
    context = context.strip()
    if not context or count_tokens([context])[0] <= CONTEXT_MAX_TOKENS:
        return context
    words = context.split()
    while words and count_tokens([" ".join(words)])[0] > CONTEXT_MAX_TOKENS - 1:
        words = words[: max(1, int(len(words) * 0.8))] if len(words) > 1 else []
    return " ".join(words) + " …" if words else ""


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
