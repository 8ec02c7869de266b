"""After parsing, before storing: whitespace normalised, chunked, filtered, language detected.

Django-free and model-free, so it runs where parsing runs: in the parsing sandbox's child
(``knowledge/parsers/sandbox.py``), under that child's CPU and memory limits and a wall-clock
limit of its own (``INGESTION_CHUNKING_SECONDS``), so no input keeps a worker busy here.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field

from knowledge import quality
from knowledge.chunking import ChunkDraft, chunk_blocks
from knowledge.parsers.base import Block, ParsedDocument, normalise_whitespace
from knowledge.tokens import counter


@dataclass
class Prepared:
    drafts: list[ChunkDraft]
    dropped: Counter = field(default_factory=Counter)
    language: str = "unknown"


@dataclass(frozen=True)
class ChunkingPlan:
    max_tokens: int  # of a chunk's own text (the chatbot's chunk size)
    overlap: int
    tokenizer: str = "wordpiece"
    model_max: int | None = None  # what the model reads: context and text together
    title: str = ""  # the document's title: with the heading path, the context of document text


DOCUMENT_KINDS = ("text", "table", "header", "footer")


def block_context(block: Block, title: str) -> str:
    """What a block's chunks are embedded with: the parser's own context (an FAQ row's question,
    a record's title), else, for document text, the document's title and heading path."""
    if block.context:
        return normalise_whitespace(block.context)
    if block.kind in DOCUMENT_KINDS:
        return " › ".join(part for part in (title, *block.heading_path) if part)
    return ""


def document_title_context(title: str, filename: str) -> str:
    """A document's title as context: a title that is just the file's name loses its extension."""
    if title == filename and "." in title:
        title = title.rsplit(".", 1)[0].replace("_", " ")
    return normalise_whitespace(title)


def jsonb_safe(value):
    """Metadata as PostgreSQL's jsonb can store it: NUL characters removed from strings and keys,
    numbers that are not finite dropped (a file's own columns and fields become chunk metadata)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonb_safe(v) for v in value]
    return value


def prepare(parsed: ParsedDocument, plan: ChunkingPlan) -> Prepared:
    blocks = [
        dataclasses.replace(block, text=normalise_whitespace(block.text), metadata=jsonb_safe(block.metadata))
        for block in parsed.blocks
    ]
    blocks = [block for block in blocks if block.text]
    for conversation in parsed.conversations:
        conversation.metadata = jsonb_safe(conversation.metadata)
        conversation.external_id = conversation.external_id.replace("\x00", "")
        for turn in conversation.turns:
            turn.speaker = turn.speaker.replace("\x00", "")
    title = normalise_whitespace(plan.title)
    drafts = chunk_blocks(
        blocks,
        count_tokens=counter(plan.tokenizer),
        max_tokens=plan.max_tokens,
        overlap=plan.overlap,
        context_of=lambda block: block_context(block, title),
        model_max=plan.model_max,
    )
    drafts, dropped = quality.filter_chunks(drafts)
    language = quality.detect_language([d.text for d in drafts[:40]])
    return Prepared(drafts=drafts, dropped=dropped, language=language)


def prepared_to_json(prepared: Prepared) -> dict:
    return {
        "drafts": [dataclasses.asdict(d) for d in prepared.drafts],
        "dropped": dict(prepared.dropped),
        "language": prepared.language,
    }


def prepared_from_json(raw: dict) -> Prepared:
    drafts = [ChunkDraft(**{**d, "heading_path": tuple(d.get("heading_path") or ())}) for d in raw["drafts"]]
    return Prepared(drafts=drafts, dropped=Counter(raw.get("dropped") or {}), language=raw.get("language", "unknown"))


__all__ = ["Block", "ChunkingPlan", "Prepared", "prepare", "prepared_from_json", "prepared_to_json"]
