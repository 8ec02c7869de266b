"""What a search embeds and matches: the question, its conversation, the query vector."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from knowledge.embeddings import provider_for_space
from knowledge.models import EmbeddingSpace
from search import cache
from search.arguments import Turn
from search.limits import CONVERSATION_MAX_TURNS as MAX_CONVERSATION_TURNS  # noqa: F401 (re-exported)
from search.limits import MODES  # noqa: F401 (re-exported)
from search.limits import QUERY_MAX_CHARS as MAX_QUERY_CHARS  # noqa: F401 (re-exported)

# Conversation-aware search: weights of earlier user turns (most recent first) in the query
# vector; the current question weighs 1. A short follow-up ("and how much is it?") leans on the
# history more, and only a short one gets the history's words added to its keyword query
# (measured on real conversations: see tests/test_search_shared.py). Assistant turns are not
# used: their text is the earlier answer, which would pull the query back to the old question.
HISTORY_USER_WEIGHTS = (0.3, 0.15, 0.05)


SHORT_FOLLOW_UP_WEIGHTS = (0.6, 0.3, 0.15)


SHORT_FOLLOW_UP_WORDS = 3


HISTORY_KEYWORDS = 6


STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each else even ever few for from further get got
    had has have having he her here hers herself him himself his how however i if in into is it its itself just
    know let like me more most much my myself need no nor not now of off on once only or other our ours ourselves
    out over own please same she should so some such tell than thank thanks that the their theirs them themselves
    then there these they this those through to too under until up us very want was we were what when where which
    while who whom why will with would yes yet you your yours yourself yourselves ok okay hi hello hey really
    something anything thing things one ones way make sure great good well""".split()
)


_WORD = re.compile(r"[^\W_][\w'-]*[^\W_]|[^\W_]", re.UNICODE)


@dataclass
class QueryPlan:
    """What a search actually embeds and matches: the current question plus weighted history."""

    query: str
    effective_query: str
    weighted_texts: list[tuple[str, float]] = field(default_factory=list)


def _content_words(text: str) -> list[str]:
    return [w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if len(w) > 2 and w not in STOPWORDS]


def query_plan_build(*, query: str, conversation: list[Turn] | None = None) -> QueryPlan:
    """The earlier turns add their meaning to the query vector (decaying weights) and their
    content words to the keyword query, so "and how much does that cost?" keeps its subject."""
    conversation = conversation or []
    users = [t.content for t in conversation if t.role == "user" and t.content.strip()]
    if users and users[-1].strip() == query.strip():
        users = users[:-1]  # the client repeated the current question as the last turn
    present = _content_words(query)
    short = len(set(present)) <= SHORT_FOLLOW_UP_WORDS
    weights = SHORT_FOLLOW_UP_WEIGHTS if short else HISTORY_USER_WEIGHTS
    weighted = [(query, 1.0)]
    for text, weight in zip(reversed(users), weights):
        weighted.append((text, weight))
    extra: list[str] = []
    for text in reversed(users[-len(weights) :]) if short else ():
        for word in _content_words(text):
            if word not in present and word not in extra:
                extra.append(word)
    extra = extra[:HISTORY_KEYWORDS]
    effective = query if not extra else f"{query} {' '.join(extra)}"
    return QueryPlan(query=query, effective_query=effective, weighted_texts=weighted)


def query_vector(space: EmbeddingSpace, plan: QueryPlan) -> np.ndarray:
    """Embeds each text once (Redis-cached per space and text) and blends them by weight."""
    texts = [cache.normalise_query(text) for text, _ in plan.weighted_texts]
    keys = [cache.embedding_key(space.key, text) for text in texts]
    vectors = cache.get_many_vectors(keys)
    missing = [i for i, v in enumerate(vectors) if v is None]
    if missing:
        fresh = provider_for_space(space).embed([texts[i] for i in missing])
        for i, vector in zip(missing, fresh):
            vectors[i] = np.asarray(vector, dtype=np.float32)
        cache.set_vectors({keys[i]: vectors[i] for i in missing})
    if len(vectors) == 1:
        return vectors[0]
    blended = sum(weight * vector for (_, weight), vector in zip(plan.weighted_texts, vectors))
    norm = float(np.linalg.norm(blended))
    return blended / norm if norm else blended
