"""Training pairs of a chatbot, from every source it already has, deduplicated by (query,
positive), each remembering its source, with a held-out split decided once per query.

- FAQ rows and chat-log Q&A pairs: the question a chunk answers is stored with it (its context);
  the question → that chunk (the first chunk of its answer);
- search feedback: ``helpful: true`` on a result → (query, chunk); ``helpful: false`` → that chunk
  is a known negative for the query's pairs;
- uploaded pairs (``training_pairs_upload``): JSONL or CSV, ``query`` plus ``chunk_id`` or
  ``positive`` text, optional ``negative``;
- synthetic pairs from the chatbot's own document chunks, no LLM: the chunk's heading (or the
  document's title) → the chunk, and a sentence of it → the rest of it (inverse cloze).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from knowledge.chunking import embedding_text
from knowledge.models import Chunk, Document
from search.models import SearchFeedback
from tenants import inputs
from tenants.errors import DomainError, NotFound
from tenants.models import Chatbot
from training.models import TrainingPair
from training.services.questions import llm_enabled, llm_questions

Source = TrainingPair.Source
MAX_QUERY_CHARS = 2000
MAX_TEXT_CHARS = 20_000
MAX_UPLOAD_ROWS = 100_000
MAX_REPORTED_ROWS = 100
SYNTHETIC_PER_CHUNK = 2
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_QUESTION_LABEL = re.compile(r"^\s*(?:Q|Question)\s*:\s*", re.IGNORECASE)  # how parsers label a FAQ question


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def digest(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:32]


def heldout_for(chatbot_id: int, query_key: str) -> bool:
    """Whether a query is held out: a seeded hash of the chatbot and the query, so the same
    question lands on the same side every time it is collected, whatever its source."""
    value = int(hashlib.sha256(f"{settings.TRAINING_SPLIT_SEED}:{chatbot_id}:{query_key}".encode()).hexdigest(), 16)
    return value % 100 < settings.TRAINING_HELDOUT_PERCENT


@dataclass
class Candidate:
    query: str
    source: str
    chunk_id: int | None = None
    positive_text: str = ""
    negative_chunk_id: int | None = None
    negative_text: str = ""

    @property
    def query_key(self) -> str:
        return digest(self.query)

    @property
    def positive_key(self) -> str:
        return f"chunk:{self.chunk_id}" if self.chunk_id is not None else f"text:{digest(self.positive_text)}"


def _store(chatbot: Chatbot, candidates: list[Candidate]) -> int:
    """Insert what is new (by query and positive); returns how many rows were added."""
    if not candidates:
        return 0
    known = dict(
        TrainingPair.objects.filter(chatbot=chatbot).values_list("query_key", "split").distinct()
    )  # a query already split keeps its side
    rows, seen = [], set()
    for c in candidates:
        key = (c.query_key, c.positive_key)
        if key in seen:
            continue
        seen.add(key)
        split = known.get(c.query_key)
        if split is None:
            split = TrainingPair.Split.HELDOUT if heldout_for(chatbot.pk, c.query_key) else TrainingPair.Split.TRAIN
            known[c.query_key] = split
        rows.append(
            TrainingPair(
                tenant_id=chatbot.tenant_id,
                chatbot=chatbot,
                query=c.query[:MAX_QUERY_CHARS],
                query_key=c.query_key,
                chunk_id=c.chunk_id,
                positive_text=c.positive_text,
                positive_key=c.positive_key,
                negative_chunk_id=c.negative_chunk_id,
                negative_text=c.negative_text,
                source=c.source,
                split=split,
            )
        )
    before = TrainingPair.objects.filter(chatbot=chatbot).count()
    TrainingPair.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    return TrainingPair.objects.filter(chatbot=chatbot).count() - before


def _ready_chunks(chatbot: Chatbot):
    return Chunk.objects.filter(chatbot=chatbot, document__status=Document.Status.READY)


def _question_pairs(chatbot: Chatbot) -> list[Candidate]:
    """FAQ rows and chat-log answers: the question each chunk answers → the first chunk of it."""
    found: dict[tuple, Candidate] = {}
    rows = (
        _ready_chunks(chatbot)
        .filter(kind__in=["faq", "qa"])
        .exclude(context__isnull=True)
        .exclude(context="")
        .order_by("document_id", "position")
        .values_list("id", "document_id", "context", "kind")
    )
    for chunk_id, document_id, context, kind in rows:
        key = (document_id, normalise(context))
        if key not in found:
            source = Source.FAQ if kind == "faq" else Source.CHATLOG
            found[key] = Candidate(query=_QUESTION_LABEL.sub("", context), source=source, chunk_id=chunk_id)
    return list(found.values())


def _feedback_pairs(chatbot: Chatbot) -> tuple[list[Candidate], dict[str, int]]:
    positives, negatives = [], {}
    rows = (
        SearchFeedback.objects.filter(chatbot_id=chatbot.pk, chunk_id__isnull=False)
        .select_related("search")
        .order_by("created_at")
    )
    ready = set(_ready_chunks(chatbot).values_list("id", flat=True))
    for feedback in rows:
        if feedback.chunk_id not in ready or not feedback.search.query.strip():
            continue
        if feedback.helpful:
            positives.append(Candidate(query=feedback.search.query, source=Source.FEEDBACK, chunk_id=feedback.chunk_id))
        else:
            negatives[digest(feedback.search.query)] = feedback.chunk_id
    return positives, negatives


def _synthetic_pairs(chatbot: Chatbot, limit: int) -> list[Candidate]:
    """Heading or title → chunk, and a sentence → the rest of its chunk (inverse cloze)."""
    out: list[Candidate] = []
    rows = (
        _ready_chunks(chatbot)
        .exclude(kind__in=["faq", "qa"])
        .order_by("id")
        .values_list("id", "text", "heading_path", "document__title")
    )
    for chunk_id, text, headings, title in rows.iterator(chunk_size=2000):
        if len(out) >= limit:
            break
        heading = (headings or [title or ""])[-1] if (headings or title) else ""
        if heading and len(heading.split()) >= 2:
            out.append(Candidate(query=heading, source=Source.SYNTHETIC, chunk_id=chunk_id))
        sentences = [s for s in _SENTENCE.split(text) if 5 <= len(s.split()) <= 40]
        if len(sentences) >= 3:
            pick = sentences[int(hashlib.sha1(text.encode()).hexdigest(), 16) % len(sentences)]
            rest = text.replace(pick, " ").strip()
            out.append(Candidate(query=pick, source=Source.SYNTHETIC, positive_text=rest))
    return out[:limit]


def _llm_pairs(chatbot: Chatbot) -> tuple[list[Candidate], str]:
    asked = TrainingPair.objects.filter(chatbot=chatbot, source=Source.LLM, chunk__isnull=False).values("chunk_id")
    rows = (
        _ready_chunks(chatbot)
        .exclude(id__in=asked)
        .order_by("id")
        .values_list("id", "text")[: settings.TRAINING_LLM_QUESTIONS]
    )
    found, problem = llm_questions(chatbot=chatbot, chunks=list(rows))
    return [Candidate(query=question, source=Source.LLM, chunk_id=chunk_id) for chunk_id, question in found], problem


def training_pairs_collect(*, chatbot: Chatbot, synthetic: bool = True, llm: bool = True) -> dict:
    """Gather pairs from the chatbot's FAQ rows, chat logs, feedback, (optionally) synthetic pairs
    and LLM-written questions (when configured: ``training/services/questions.py``); idempotent (a
    pair already there is kept as it is). Returns counts added per source (and ``llm_problem`` when
    the LLM round stopped early)."""
    added: Counter = Counter()
    written, problem = _llm_pairs(chatbot) if llm and llm_enabled() else ([], "")  # no transaction held meanwhile
    with transaction.atomic():
        added[Source.LLM] += _store(chatbot, written)
        for candidate_list in (_question_pairs(chatbot),):
            for source, group in _by_source(candidate_list).items():
                added[source] += _store(chatbot, group)
        positives, negatives = _feedback_pairs(chatbot)
        added[Source.FEEDBACK] += _store(chatbot, positives)
        for query_key, chunk_id in negatives.items():
            TrainingPair.objects.filter(chatbot=chatbot, query_key=query_key, negative_chunk__isnull=True).exclude(
                chunk_id=chunk_id
            ).update(negative_chunk_id=chunk_id)
        if synthetic:
            added[Source.SYNTHETIC] += _store(chatbot, _synthetic_pairs(chatbot, settings.TRAINING_MAX_SYNTHETIC))
    counts: dict = {k: v for k, v in added.items() if v}
    if problem:
        counts["llm_problem"] = problem
    return counts


def _by_source(candidates: list[Candidate]) -> dict[str, list[Candidate]]:
    grouped: dict[str, list[Candidate]] = {}
    for c in candidates:
        grouped.setdefault(c.source, []).append(c)
    return grouped


@dataclass
class UploadReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict] = field(default_factory=list)

    def reject(self, row: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED_ROWS:
            self.errors.append({"row": row, "reason": reason})


def _rows(data: bytes, filename: str):
    text = data.decode("utf-8-sig", errors="strict")
    if filename.lower().endswith(".csv") or (not text.lstrip().startswith("{") and "," in text.splitlines()[0]):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "query" not in [f.strip().lower() for f in reader.fieldnames]:
            raise DomainError("A CSV of training pairs needs a header with a query column.", field="file")
        for number, row in enumerate(reader, start=2):
            yield number, {(k or "").strip().lower(): v for k, v in row.items()}, None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except ValueError as exc:
            yield number, None, f"not a JSON object ({exc})"


def training_pairs_from_gap(*, chatbot: Chatbot, queries: list[str], chunk_id: int) -> int:
    """The knowledge-gaps shortcut "this answered it": each of a gap's queries (its phrasings)
    and the chunk written to answer it become feedback pairs. Returns how many were new."""
    from knowledge.models import Chunk

    if not Chunk.objects.filter(chatbot=chatbot, pk=chunk_id).exists():
        raise NotFound("That answer is not one of this chatbot's chunks.", field="chunk_id")
    texts = [q.strip()[:MAX_QUERY_CHARS] for q in queries if isinstance(q, str) and q.strip()][:50]
    if not texts:
        raise DomainError("Name at least one question the answer answers.", field="queries")
    with transaction.atomic():
        return _store(chatbot, [Candidate(query=q, source=Source.FEEDBACK, chunk_id=chunk_id) for q in texts])


def training_pairs_upload(*, chatbot: Chatbot, data: bytes, filename: str) -> UploadReport:
    """Uploaded pairs: each row ``query`` plus ``chunk_id`` (one of this chatbot's ready chunks) or
    ``positive`` text, optional ``negative`` text; every row is accepted or rejected with a reason."""
    report = UploadReport()
    try:
        rows = list(_rows(data, filename))
    except UnicodeDecodeError:
        raise DomainError("The file is not UTF-8 text; save it as UTF-8 JSONL or CSV.", field="file") from None
    if not rows:
        raise DomainError("The file holds no rows.", field="file")
    if len(rows) > MAX_UPLOAD_ROWS:
        raise DomainError(f"At most {MAX_UPLOAD_ROWS} rows per upload; split the file.", field="file")
    ready = set(_ready_chunks(chatbot).values_list("id", flat=True))
    candidates = []
    for number, row, problem in rows:
        if problem or not isinstance(row, dict):
            report.reject(number, problem or "not a JSON object")
            continue
        try:
            query = inputs.text(row.get("query"), field="query", max_length=MAX_QUERY_CHARS).strip()
            positive = inputs.text(row.get("positive") or "", field="positive", max_length=MAX_TEXT_CHARS).strip()
            negative = inputs.text(row.get("negative") or "", field="negative", max_length=MAX_TEXT_CHARS).strip()
        except DomainError as exc:
            report.reject(number, exc.message)
            continue
        chunk_id = row.get("chunk_id")
        if isinstance(chunk_id, str) and chunk_id.strip().isdigit():
            chunk_id = int(chunk_id.strip())
        elif chunk_id in ("", None):
            chunk_id = None
        if not query:
            report.reject(number, "query is empty")
        elif chunk_id is None and not positive:
            report.reject(number, "give chunk_id or positive")
        elif chunk_id is not None and (isinstance(chunk_id, bool) or not isinstance(chunk_id, int)):
            report.reject(number, "chunk_id must be a whole number")
        elif chunk_id is not None and chunk_id not in ready:
            report.reject(number, f"chunk {chunk_id} is not one of this chatbot's ready chunks")
        else:
            candidates.append(
                Candidate(
                    query=query,
                    source=Source.UPLOAD,
                    chunk_id=chunk_id,
                    positive_text="" if chunk_id is not None else positive,
                    negative_text=negative,
                )
            )
    with transaction.atomic():
        report.accepted = _store(chatbot, candidates)
    report.duplicates = len(candidates) - report.accepted
    return report


@dataclass
class PairSet:
    """Pairs ready for training or evaluation: texts as the index embeds them."""

    anchors: list[str]
    positives: list[str]
    negatives: list[str | None]
    sources: list[str]
    chunk_ids: list[int | None]
    created: list = field(default_factory=list)  # each pair's created_at (old vs new held-out questions)


def pair_texts(*, chatbot: Chatbot, split: str, sources: list[str] | None = None, limit: int | None = None) -> PairSet:
    pairs = TrainingPair.objects.filter(chatbot=chatbot, split=split).select_related("chunk", "negative_chunk")
    if sources:
        pairs = pairs.filter(source__in=sources)
    pairs = pairs.order_by("id")
    if limit:
        pairs = pairs[:limit]
    out = PairSet([], [], [], [], [])
    for pair in pairs:
        positive = embedding_text(pair.chunk.text, pair.chunk.context) if pair.chunk else pair.positive_text
        negative = (
            embedding_text(pair.negative_chunk.text, pair.negative_chunk.context)
            if pair.negative_chunk
            else (pair.negative_text or None)
        )
        out.anchors.append(pair.query)
        out.positives.append(positive)
        out.negatives.append(negative)
        out.sources.append(pair.source)
        out.chunk_ids.append(pair.chunk_id)
        out.created.append(pair.created_at)
    return out


def training_data_summary(*, chatbot: Chatbot) -> dict:
    counts = Counter(
        (source, split) for source, split in TrainingPair.objects.filter(chatbot=chatbot).values_list("source", "split")
    )
    by_source = {
        source: {"train": counts.get((source, "train"), 0), "heldout": counts.get((source, "heldout"), 0)}
        for source in Source.values
    }
    train = sum(v["train"] for v in by_source.values())
    heldout = sum(v["heldout"] for v in by_source.values())
    return {"by_source": by_source, "train": train, "heldout": heldout, "total": train + heldout}


def ensure_enough_pairs(*, chatbot: Chatbot, sources: list[str] | None = None) -> dict:
    summary = training_data_summary(chatbot=chatbot)
    train = sum(v["train"] for k, v in summary["by_source"].items() if not sources or k in sources)
    if train < settings.TRAINING_MIN_PAIRS:
        have = ", ".join(f"{k} {v['train']}" for k, v in summary["by_source"].items() if v["train"]) or "none"
        raise DomainError(
            f"Too little training data: {train} training pairs ({have}); at least {settings.TRAINING_MIN_PAIRS} "
            "are needed. Add FAQ files or chat logs, collect search feedback with chunk_id, or upload pairs "
            "to /api/training/pairs.",
            field="chatbot_id",
            code="too_little_data",
        )
    return summary
