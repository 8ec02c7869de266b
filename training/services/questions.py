"""Questions written by an LLM for the chatbot's own chunks (``source: llm``), through the
``openai`` client's chat-completions API (``OPENAI_BASE_URL`` points it at any server speaking
it). Off unless ``OPENAI_API_KEY`` and ``TRAINING_LLM_MODEL`` are set; at most
``TRAINING_LLM_QUESTIONS`` chunks per collection, each asked once (a chunk that has an LLM pair
is not asked again). A provider that fails stops the round with its reason; the collection and
the job go on with the other sources."""

from __future__ import annotations

import logging

from django.conf import settings

from tenants.models import Chatbot

logger = logging.getLogger(__name__)

PROMPT = (
    "You write training data for a customer-support search engine. Given a passage from the "
    "support knowledge base, write one question a customer might type that this passage answers. "
    "Use the customer's own words, not the passage's. Reply with the question only."
)
MAX_PASSAGE_CHARS = 4000
MAX_QUESTION_CHARS = 300


def llm_enabled() -> bool:
    return bool(settings.OPENAI_API_KEY and settings.TRAINING_LLM_MODEL and settings.TRAINING_LLM_QUESTIONS)


def llm_questions(*, chatbot: Chatbot, chunks: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], str]:
    """``([(chunk id, question)], problem)``: a question per chunk until done or the provider fails."""
    import openai

    client = openai.OpenAI(
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL,
        timeout=settings.OPENAI_TIMEOUT_SECONDS,
        max_retries=settings.OPENAI_MAX_RETRIES,
    )
    found: list[tuple[int, str]] = []
    for chunk_id, text in chunks:
        try:
            response = client.chat.completions.create(
                model=settings.TRAINING_LLM_MODEL,
                messages=[
                    {"role": "system", "content": PROMPT},
                    {"role": "user", "content": text[:MAX_PASSAGE_CHARS]},
                ],
                max_tokens=80,
                temperature=0.7,
            )
        except openai.APIError as exc:
            problem = f"LLM questions stopped after {len(found)}: {type(exc).__name__}: {exc}"[:500]
            logger.warning("chatbot %s: %s", chatbot.pk, problem)
            return found, problem
        content = (response.choices[0].message.content or "").strip() if response.choices else ""
        question = " ".join(content.split()).strip('"“” ')[:MAX_QUESTION_CHARS]
        if len(question.split()) >= 3:
            found.append((chunk_id, question))
    return found, ""
