"""Which model serves a chatbot's searches: the one place that decides it, for every path (the
DRF views, the fast path, the dashboard playground, benchmarks).

``serving_for`` returns the chatbot's serving space (its active ``ChatbotSpace``: the built-in
model or a fine-tuned version with its own weights) and its learned hybrid keyword factor,
remembered per process for the chatbot's content version. Everything that changes either one
bumps the content version (``chatbot_space_activate``, a blend vote that moves the factor), so
the very next search reads them again. The A/B assignment of a search will be decided here too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from knowledge.models import ChatbotSpace, EmbeddingSpace
from knowledge.services import chatbot_space_ensure_active
from search.models import SearchBlend
from tenants.models import Chatbot

MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Serving:
    space: EmbeddingSpace
    keyword_factor: float = 1.0


_serving: dict[tuple[int, int], Serving] = {}
_lock = threading.Lock()


def serving_for(chatbot: Chatbot, *, create: bool = True) -> Serving | None:
    """The chatbot's serving space and keyword factor for its current content version. A chatbot
    that holds no space yet gets its active space from its model setting (``create``), or None."""
    key = (chatbot.pk, chatbot.content_version)
    found = _serving.get(key)
    if found is not None:
        return found
    link = (
        ChatbotSpace.objects.filter(chatbot_id=chatbot.pk, role=ChatbotSpace.Role.ACTIVE)
        .select_related("space__vectors_from")
        .first()
    )
    if link is None:
        if not create:
            return None
        link = chatbot_space_ensure_active(chatbot=chatbot)
    blend = SearchBlend.objects.filter(chatbot_id=chatbot.pk).only("keyword_votes", "vector_votes").first()
    found = Serving(space=link.space, keyword_factor=blend.keyword_factor if blend is not None else 1.0)
    with _lock:
        if len(_serving) >= MAX_REMEMBERED:
            _serving.clear()
        _serving[key] = found
    return found


def blend_keyword_factor(chatbot: Chatbot) -> float:
    """The chatbot's learned keyword factor (1.0 until feedback says otherwise)."""
    return serving_for(chatbot).keyword_factor


def serving_forget() -> None:
    """Forget what this process remembers (tests, or after restoring a database)."""
    with _lock:
        _serving.clear()
