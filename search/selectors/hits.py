"""The rows every search returns: ``Hit``, the result columns and their reading."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from search.filters import SearchFilters

NO_FILTERS = SearchFilters()

RESULT_COLUMNS = """c.id, c.document_id, d.title, c.text, d.content_type, d.category, c.metadata, c.page,
    c.heading_path, coalesce(c.context, ''), d.metadata, d.original_filename"""


@dataclass
class Hit:
    chunk_id: int
    document_id: int
    title: str
    content: str
    content_type: str
    category: str
    metadata: dict
    page: int | None
    heading: list
    score: float
    ranks: dict = field(default_factory=dict)
    context: str = ""  # what the chunk was embedded with (its FAQ question, document title and headings)
    # the document's own metadata and file name (the OpenAI adapter's attributes and filename; the
    # product's payload shows the chunk's metadata only)
    document_metadata: dict = field(default_factory=dict)
    filename: str = ""


def _json(value, default):
    # Django's psycopg connection leaves jsonb as text in raw queries.
    if value is None:
        return default
    return json.loads(value) if isinstance(value, str) else value


def _hits(rows) -> list[Hit]:
    return [
        Hit(
            chunk_id=r[0],
            document_id=r[1],
            title=r[2],
            content=r[3],
            content_type=r[4],
            category=r[5],
            metadata=_json(r[6], {}),
            page=r[7],
            heading=_json(r[8], []),
            context=r[9],
            document_metadata=_json(r[10], {}),
            filename=r[11] or "",
            score=float(r[12]),
        )
        for r in rows
    ]


def _literal(vector) -> str:
    return "[" + ",".join(f"{float(v):.7f}" for v in vector) + "]"
