"""Which model serves a chatbot's searches: the one place that decides it, for every path (the
DRF views, the fast path, the dashboard playground, benchmarks).

``serving_for`` returns the chatbot's serving space (its active ``ChatbotSpace``: the built-in
model or a fine-tuned version with its own weights) and its learned hybrid keyword factor,
and its measured search tuning (``SearchTuning``: HNSW ef_search and the exact-search size, set
by the optimizer), remembered per process for the chatbot's content version. Everything that
changes any of them bumps the content version (``chatbot_space_activate``, a blend vote that
moves the factor, a tuning the optimizer stores), so the very next search reads them again.

While an A/B test runs (a ``testing`` space, ``chatbot_space_test_begin``) it decides the
variant too: a search's assignment key (``assignment_key``: the caller's ``user_id``, else its
``conversation_id``, else the normalised query) hashed with the test's salt falls in one of
10,000 buckets, and the first ``traffic_percent`` hundredths of them are the variant's. The
same key always lands in the same bucket (sticky), keys spread evenly (balanced), and a new
test reshuffles (its salt differs). A caller that names no key (training's "which model serves
now", the dashboard's labels) gets the control.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, replace

from knowledge.models import ChatbotSpace, EmbeddingSpace
from knowledge.services import chatbot_space_ensure_active
from search.models import SearchBlend, SearchTuning
from tenants.models import Chatbot

MAX_REMEMBERED = 10_000


BUCKETS = 10_000
CONTROL, VARIANT = "control", "variant"


@dataclass(frozen=True)
class Serving:
    space: EmbeddingSpace
    keyword_factor: float = 1.0
    variant: str | None = None  # while an A/B test runs: "control" or "variant"
    # the chatbot's measured tuning (SearchTuning, the optimizer's "tune"); None: the settings' defaults
    ef_search: int | None = None
    exact_max: int | None = None


@dataclass(frozen=True)
class _Test:
    space: EmbeddingSpace
    traffic_percent: int
    salt: int  # the testing link's id: each test assigns afresh


_serving: dict[tuple[int, int], tuple[Serving, _Test | None]] = {}
_lock = threading.Lock()


def assignment_key(*, query: str, user_id: str | None = None, conversation_id: str | None = None) -> str:
    """What decides a search's A/B variant: the end user, else the conversation, else the query."""
    if user_id:
        return f"u:{user_id}"
    if conversation_id:
        return f"c:{conversation_id}"
    return "q:" + " ".join(query.split()).casefold()


def assignment_bucket(salt: int, key: str) -> int:
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def serving_for(chatbot: Chatbot, *, create: bool = True, assignment: str | None = None) -> Serving | None:
    """The chatbot's serving space and keyword factor for its current content version; while an
    A/B test runs, the control's or the variant's by ``assignment`` (``assignment_key``), with
    ``variant`` naming which. A chatbot that holds no space yet gets its active space from its
    model setting (``create``), or None."""
    key = (chatbot.pk, chatbot.content_version)
    found = _serving.get(key)
    if found is None:
        found = _load(chatbot, create=create)
        if found is None:
            return None
        with _lock:
            if len(_serving) >= MAX_REMEMBERED:
                _serving.clear()
            _serving[key] = found
    control, test = found
    if test is None:
        return control
    if assignment is not None and assignment_bucket(test.salt, assignment) < test.traffic_percent * BUCKETS // 100:
        return replace(control, space=test.space, variant=VARIANT)
    return control


def _load(chatbot: Chatbot, *, create: bool) -> tuple[Serving, _Test | None] | None:
    links = list(
        ChatbotSpace.objects.filter(
            chatbot_id=chatbot.pk, role__in=[ChatbotSpace.Role.ACTIVE, ChatbotSpace.Role.TESTING]
        ).select_related("space__vectors_from")
    )
    active = next((link for link in links if link.role == ChatbotSpace.Role.ACTIVE), None)
    testing = next((link for link in links if link.role == ChatbotSpace.Role.TESTING), None)
    if active is None:
        if not create:
            return None
        active = chatbot_space_ensure_active(chatbot=chatbot)
    blend = SearchBlend.objects.filter(chatbot_id=chatbot.pk).only("keyword_votes", "vector_votes").first()
    factor = blend.keyword_factor if blend is not None else 1.0
    tuning = SearchTuning.objects.filter(chatbot_id=chatbot.pk).values_list("ef_search", "exact_max").first()
    tuned = {"ef_search": tuning[0], "exact_max": tuning[1]} if tuning else {}
    if testing is None or not testing.traffic_percent:
        return Serving(space=active.space, keyword_factor=factor, **tuned), None
    control = Serving(space=active.space, keyword_factor=factor, variant=CONTROL, **tuned)
    return control, _Test(space=testing.space, traffic_percent=testing.traffic_percent, salt=testing.pk)


def blend_keyword_factor(chatbot: Chatbot) -> float:
    """The chatbot's learned keyword factor (1.0 until feedback says otherwise)."""
    return serving_for(chatbot).keyword_factor


def serving_forget() -> None:
    """Forget what this process remembers (tests, or after restoring a database)."""
    with _lock:
        _serving.clear()
