"""JSON and JSON Lines: FAQ pairs, records, and chat logs (OpenAI chat, ShareGPT, threads)."""

from __future__ import annotations

import json

from knowledge.parsers.base import Block, ParsedConversation, ParsedDocument, ParseError, Turn, clean_text
from knowledge.parsers.guards import json_loads
from knowledge.parsers.tabular import ANSWER_COLUMNS, QUESTION_COLUMNS, find_column, html_to_text

CONTENT_KEYS = ("content", "value", "text", "message", "body", "utterance")
SPEAKER_KEYS = ("role", "from", "speaker", "sender", "author", "user", "author_id", "name")
USER_ROLES = {"user", "human", "customer", "client", "visitor", "prompter", "question", "caller", "guest"}
ASSISTANT_ROLES = {
    "assistant",
    "gpt",
    "bot",
    "agent",
    "support",
    "model",
    "chatgpt",
    "ai",
    "rep",
    "answer",
    "representative",
    "operator",
    "staff",
}
SYSTEM_ROLES = {"system", "action", "tool", "function", "developer"}
RECORD_TEXT_KEYS = ("title", "name", "question", "text", "content", "body", "description", "answer", "summary")
CONTAINER_KEYS = (
    "conversations",
    "threads",
    "dialogs",
    "dialogues",
    "chats",
    "data",
    "items",
    "records",
    "faqs",
    "faq",
    "documents",
    "entries",
    "rows",
    "results",
)


def parse_json_text(text: str, *, lines: bool) -> ParsedDocument:
    try:
        if lines:
            payload = [json_loads(line) for line in text.splitlines() if line.strip()]
        else:
            payload = json_loads(text)
    except ValueError as exc:
        raise ParseError(f"The JSON is malformed: {exc}.") from None
    payload = _unwrap(payload)
    conversations = _conversations(payload)
    if conversations is not None:
        return conversations_document(conversations, "chat-jsonl" if lines else "chat-json")
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list) or not payload:
        raise ParseError("The JSON holds no records: expected a list of objects, FAQ pairs or conversations.")
    records = [r for r in payload if isinstance(r, dict)]
    if not records:
        strings = [clean_text(str(r)) for r in payload if isinstance(r, str) and r.strip()]
        if strings:
            return ParsedDocument(detected_type="json", blocks=[Block(text=s, atomic=True) for s in strings])
        raise ParseError("The JSON holds no records: expected a list of objects, FAQ pairs or conversations.")
    return _records(records, "jsonl" if lines else "json")


def _unwrap(payload):
    if isinstance(payload, dict) and not _is_conversation(payload):
        lists = [k for k in CONTAINER_KEYS if isinstance(payload.get(k), list)]
        if lists:
            return payload[lists[0]]
    return payload


def _content(message: dict) -> str | None:
    for key in CONTENT_KEYS:
        value = message.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):  # OpenAI content parts
            parts = [p.get("text", "") for p in value if isinstance(p, dict)]
            if parts:
                return "\n".join(parts)
    return None


def _is_message(item) -> bool:
    return (
        isinstance(item, dict)
        and _content(item) is not None
        and (any(k in item for k in SPEAKER_KEYS) or "inbound" in item)
    )


def _message_list(item):
    if isinstance(item, dict):
        for key in ("messages", "conversations", "conversation", "turns", "dialog", "utterances"):
            value = item.get(key)
            if isinstance(value, list) and value and all(_is_message(m) for m in value):
                return value
        return None
    if isinstance(item, list) and item and all(_is_message(m) for m in item):
        return item
    return None


def _is_conversation(item) -> bool:
    return _message_list(item) is not None


def _conversations(payload) -> list[ParsedConversation] | None:
    items = [payload] if isinstance(payload, dict) else payload
    if not isinstance(items, list) or not items:
        return None
    lists = [_message_list(item) for item in items]
    if sum(1 for m in lists if m is not None) < max(1, 0.8 * len(items)):
        return None
    conversations = []
    for item, messages in zip(items, lists):
        if messages is None:
            continue
        external_id, metadata = "", {}
        if isinstance(item, dict):
            external_id = str(item.get("id") or item.get("convo_id") or item.get("conversation_id") or "")
            metadata = {k: v for k, v in item.items() if isinstance(v, (str, int, float, bool)) and k != "id"}
        conversations.append(ParsedConversation(turns=to_turns(messages), external_id=external_id, metadata=metadata))
    return conversations


def role_of(raw: str) -> str | None:
    value = raw.strip().lower()
    if value in USER_ROLES:
        return "user"
    if value in ASSISTANT_ROLES:
        return "assistant"
    if value in SYSTEM_ROLES:
        return "system"
    return None


def to_turns(messages: list[dict]) -> list[Turn]:
    """Named speakers who are not roles: whoever speaks first is the customer, the rest agents."""
    turns, first_speaker = [], None
    for message in messages:
        content = clean_text(_content(message) or "")
        if not content:
            continue
        speaker = next((str(message[k]) for k in SPEAKER_KEYS if message.get(k) not in (None, "")), "")
        role = role_of(speaker)
        if role is None and isinstance(message.get("inbound"), bool):
            role = "user" if message["inbound"] else "assistant"
        if role is None:
            first_speaker = first_speaker or speaker
            role = "user" if speaker == first_speaker else "assistant"
        turns.append(Turn(role=role, content=content, speaker=speaker))
    return turns


def conversations_document(conversations: list[ParsedConversation], detected_type: str) -> ParsedDocument:
    blocks = []
    for index, conversation in enumerate(conversations):
        for q, a in conversation.qa_pairs():
            question, answer = conversation.turns[q], conversation.turns[a]
            blocks.append(
                Block(
                    text=f"Q: {question.content}\nA: {answer.content}",
                    kind="qa",
                    atomic=True,
                    heading_path=(question.content[:200],),
                    context=f"Q: {question.content}",
                    metadata={
                        "conversation": index,
                        "question_turn": q,
                        "answer_turn": a,
                        **({"conversation_id": conversation.external_id} if conversation.external_id else {}),
                    },
                )
            )
    turns = sum(len(c.turns) for c in conversations)
    if not turns:
        raise ParseError("The chat log has no messages with text.")
    warnings = []
    if not blocks:
        warnings.append(
            "No question followed by an agent answer was found; conversations were kept, "
            "but nothing from them is searchable."
        )
    return ParsedDocument(
        detected_type=detected_type,
        blocks=blocks,
        conversations=conversations,
        warnings=warnings,
        stats={"conversations": len(conversations), "turns": turns, "qa_pairs": len(blocks)},
    )


def _records(records: list[dict], detected_type: str) -> ParsedDocument:
    columns = sorted({k for r in records for k in r})
    question = find_column(columns, QUESTION_COLUMNS)
    answer = find_column(columns, ANSWER_COLUMNS)
    blocks, skipped = [], 0
    for index, record in enumerate(records):
        scalars = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool)) and v not in ("", None)}
        if question and answer and question != answer and record.get(question) and record.get(answer):
            q = clean_text(str(record[question]))
            a = str(record[answer])
            a = clean_text(html_to_text(a) if answer == "answer_html" else a)
            metadata = {k: v for k, v in scalars.items() if k not in (question, answer)}
            blocks.append(
                Block(
                    text=f"Q: {q}\nA: {a}",
                    kind="faq",
                    atomic=True,
                    heading_path=(q[:200],),
                    context=f"Q: {q}",
                    metadata={**metadata, "record": index},
                )
            )
            continue
        text_keys = [k for k in RECORD_TEXT_KEYS if isinstance(record.get(k), str) and record[k].strip()]
        if text_keys:
            text = "\n\n".join(clean_text(record[k]) for k in text_keys)
            metadata = {k: v for k, v in scalars.items() if k not in text_keys}
        else:
            text = "\n".join(f"{k}: {v}" for k, v in scalars.items())
            metadata = {}
        for key, value in record.items():
            if isinstance(value, dict) and value and len(json.dumps(value)) < 2000:
                metadata[key] = value
        if not text.strip():
            skipped += 1
            continue
        title = record.get("title") if isinstance(record.get("title"), str) else ""
        blocks.append(
            Block(
                text=text,
                kind="record",
                atomic=True,
                metadata={**metadata, "record": index},
                heading_path=(title[:200],) if title else (),
                context=clean_text(title) if title else "",
            )
        )
    if not blocks:
        raise ParseError("The JSON records contain no text.")
    warnings = [f"{skipped} records without text were skipped."] if skipped else []
    return ParsedDocument(
        detected_type=detected_type + ("-faq" if blocks[0].kind == "faq" else ""),
        blocks=blocks,
        warnings=warnings,
        stats={"records": len(records)},
    )
