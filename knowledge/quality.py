"""Per-document quality: what was dropped, what is duplicated, which language, what to watch."""

from __future__ import annotations

import re
from collections import Counter

from knowledge.chunking import ChunkDraft
from knowledge.parsers.base import normalise_whitespace

# Matched in full against text whose whitespace is normalised (single spaces, no runs): each
# pattern has no two quantifiers that could share a character, so it runs in linear time
# whatever the input (a run of spaces between two quantified parts made the old page-number
# pattern quadratic).
_BOILERPLATE = [
    re.compile(r"(?:page ?)?\d+(?: ?(?:of|/) ?\d+)?", re.I),
    re.compile(r"(?:©|\(c\)|copyright)\b.{0,120}", re.I | re.S),
    re.compile(r"all rights reserved\.?", re.I),
    re.compile(r"(?:confidential|draft|internal use only)\.?", re.I),
    re.compile(r"[\W_]+"),
]
_WORD = re.compile(r"[^\W\d_]{2,}")


def drop_reason(draft: ChunkDraft) -> str | None:
    text = normalise_whitespace(draft.text)
    if not text:
        return "empty"
    if any(p.fullmatch(text) for p in _BOILERPLATE):
        return "boilerplate"
    if len(_WORD.findall(text)) < 2:
        return "too little text"
    if draft.kind == "text" and len(text) > 40 and text.count(".") / len(text) > 0.4:
        return "boilerplate"  # dot leaders of a table of contents
    return None


def filter_chunks(drafts: list[ChunkDraft]) -> tuple[list[ChunkDraft], Counter]:
    kept, dropped = [], Counter()
    for draft in drafts:
        reason = drop_reason(draft)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(draft)
    return kept, dropped


def detect_language(texts: list[str]) -> str:
    sample = " ".join(texts)[:6000]
    if len(_WORD.findall(sample)) < 3:
        return "unknown"
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(sample)
    except LangDetectException:
        return "unknown"


def build_report(
    *,
    drafts: list[ChunkDraft],
    dropped: Counter,
    parse_warnings: list[str],
    stats: dict,
    exact_duplicates: int,
    near_duplicates: int,
    language: str,
    page_count: int | None,
) -> dict:
    warnings = list(parse_warnings)
    total = len(drafts) + sum(dropped.values())
    if dropped:
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        warnings.append(f"Dropped {sum(dropped.values())} of {total} chunks ({parts}).")
    if exact_duplicates:
        warnings.append(f"{exact_duplicates} chunks repeat text already in this chatbot word for word.")
    if near_duplicates:
        warnings.append(f"{near_duplicates} chunks are near-duplicates of existing chunks.")
    if language not in ("en", "unknown"):
        warnings.append(f"Detected language '{language}'; the default embedding model is trained on English.")
    tokens = [d.token_count for d in drafts]
    return {
        "chunks": len(drafts),
        "chunks_dropped": sum(dropped.values()),
        "dropped_reasons": dict(dropped),
        "exact_duplicates": exact_duplicates,
        "near_duplicates": near_duplicates,
        "language": language,
        "pages": page_count,
        "avg_tokens": round(sum(tokens) / len(tokens), 1) if tokens else 0,
        "max_tokens": max(tokens) if tokens else 0,
        "stats": stats,
        "warnings": warnings,
    }
