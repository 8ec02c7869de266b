"""Embedding spaces: which models a chatbot holds vectors in, and switching the one that serves."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, transaction

from knowledge import vectors
from knowledge.embeddings import (
    provider_for,
    provider_for_space,
)
from knowledge.models import (
    ChatbotSpace,
    EmbeddingSpace,
)
from knowledge.services.embedding import embed_batches
from tenants.errors import (
    Conflict,
    NotFound,
)
from tenants.models import Chatbot, Tenant
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)


def embedding_space_get_or_create(
    *, model_key: str, version: str = "1", tenant: Tenant | None = None
) -> EmbeddingSpace:
    """The space of a model version: a built-in one (no tenant; created, with its index, by the
    owner's ``app_global_space_ensure``: no tenant may write shared rows) or the tenant's own."""
    provider = provider_for(model_key)
    if tenant is None:
        space_id = vectors.global_space_ensure(
            provider=provider.provider, model_name=provider.model_name, version=version, dimensions=provider.dimensions
        )
        return EmbeddingSpace.objects.get(pk=space_id)
    with transaction.atomic():
        space, created = EmbeddingSpace.objects.get_or_create(
            tenant=tenant,
            provider=provider.provider,
            model_name=provider.model_name,
            version=version,
            defaults={"dimensions": provider.dimensions},
        )
        if created:
            vectors.ensure_space_index(space)
    return space


def embedding_space_create_version(
    *, tenant: Tenant, model_key: str, version: str, artifact: str, vectors_from: EmbeddingSpace | None = None
) -> EmbeddingSpace:
    """A tenant's own version of a model: its weights at ``artifact`` (a folder under
    TRAINING_ARTIFACTS_DIR), served through ``provider_for_space``, with its own HNSW index; or,
    with ``vectors_from``, a query adapter over that space's vectors (no vectors or index of its
    own)."""
    provider = provider_for(model_key)
    with transaction.atomic():
        space = EmbeddingSpace.objects.create(
            tenant=tenant,
            provider=provider.provider,
            model_name=provider.model_name,
            version=version,
            dimensions=provider.dimensions,
            artifact=artifact,
            vectors_from=vectors_from.store if vectors_from is not None else None,
        )
        if vectors_from is None:
            vectors.ensure_space_index(space)
    return space


def chatbot_space_ensure_active(*, chatbot: Chatbot) -> ChatbotSpace:
    """The chatbot's active space, created from its embedding model setting on first use."""
    active = ChatbotSpace.objects.filter(chatbot=chatbot, role=ChatbotSpace.Role.ACTIVE).select_related("space")
    found = active.first()
    if found is not None:
        return found
    space = embedding_space_get_or_create(model_key=chatbot.embedding_model)
    try:
        with transaction.atomic():
            return ChatbotSpace.objects.create(
                tenant_id=chatbot.tenant_id, chatbot=chatbot, space=space, role=ChatbotSpace.Role.ACTIVE
            )
    except IntegrityError:  # created concurrently
        return active.get()


def chatbot_space_add(
    *,
    chatbot: Chatbot,
    model_key: str,
    version: str = "1",
    role: str = ChatbotSpace.Role.BUILDING,
    tenant_owned: bool = False,
) -> ChatbotSpace:
    """Hold a second space beside the active one (re-embedding, A/B candidates, a fine-tuned
    version): a built-in model version, or with ``tenant_owned`` the chatbot's tenant's own."""
    chatbot_space_ensure_active(chatbot=chatbot)
    space = embedding_space_get_or_create(
        model_key=model_key, version=version, tenant=chatbot.tenant if tenant_owned else None
    )
    link, _ = ChatbotSpace.objects.get_or_create(
        tenant_id=chatbot.tenant_id, chatbot=chatbot, space=space, defaults={"role": role}
    )
    return link


def chatbot_space_activate(*, chatbot: Chatbot, space: EmbeddingSpace) -> ChatbotSpace:
    """Serve ``space`` for the chatbot from now on, in one transaction: the active space retires
    (its vectors are kept), ``space`` becomes active, the content version is bumped (cached results
    stop being read) and the fast path hears of it (the table's trigger). ``space`` must be one the
    chatbot holds, with a current vector for every chunk of its ready documents
    (``chunk_embeddings_backfill``), so no search ever meets a half-built space."""
    with transaction.atomic():
        links = {link.space_id: link for link in ChatbotSpace.objects.select_for_update().filter(chatbot=chatbot)}
        target = links.get(space.pk)
        if target is None:
            raise NotFound("This chatbot holds no vectors in that embedding space.")
        if target.role == ChatbotSpace.Role.ACTIVE:
            return target
        missing = vectors.chunks_missing_count(space=space.store, chatbot_id=chatbot.pk)
        if missing:
            raise Conflict(
                f"{missing} chunks have no vector in this embedding space yet; re-embed them "
                "(chunk_embeddings_backfill) before activating it."
            )
        ChatbotSpace.objects.filter(chatbot=chatbot, role=ChatbotSpace.Role.ACTIVE).update(
            role=ChatbotSpace.Role.RETIRED
        )
        target.role, target.traffic_percent = ChatbotSpace.Role.ACTIVE, 0
        target.save(update_fields=["role", "traffic_percent"])
        chatbot_content_changed(chatbot_id=chatbot.pk)
    return target


def chunk_embeddings_backfill(*, chatbot: Chatbot, space: EmbeddingSpace, progress=None) -> int:
    """Embed every chunk of the chatbot's ready documents that lacks a current vector in
    ``space`` (a space being built, a changed context); no job lease, safe to run again or
    alongside ingestion (vectors are keyed by chunk and space). ``progress(n)`` after each batch
    stored. Returns how many vectors were written. An adapter space fills its store."""
    space = space.store

    def fetch(after: int) -> list:
        return vectors.chunks_to_embed(
            space=space, chatbot_id=chatbot.pk, limit=settings.EMBEDDING_BATCH_SIZE, after=after
        )

    return embed_batches(
        chatbot.tenant_id, chatbot.pk, space, provider_for_space(space), fetch, progress or (lambda count: None)
    )


def chatbot_space_test_begin(*, chatbot: Chatbot, space: EmbeddingSpace, traffic_percent: int) -> ChatbotSpace:
    """``space`` serves ``traffic_percent`` of the chatbot's searches beside the active space
    (the variant of an A/B test), from the next search on: same checks as
    ``chatbot_space_activate`` (every chunk has its vector), one transaction, content version
    bumped (caches and the fast path hear of it)."""
    with transaction.atomic():
        links = {link.space_id: link for link in ChatbotSpace.objects.select_for_update().filter(chatbot=chatbot)}
        target = links.get(space.pk)
        if target is None:
            raise NotFound("This chatbot holds no vectors in that embedding space.")
        if target.role == ChatbotSpace.Role.ACTIVE:
            raise Conflict("That space already serves every search of this chatbot.")
        if any(link.role == ChatbotSpace.Role.TESTING and link.pk != target.pk for link in links.values()):
            raise Conflict("Another space is already being tested for this chatbot.")
        missing = vectors.chunks_missing_count(space=space.store, chatbot_id=chatbot.pk)
        if missing:
            raise Conflict(f"{missing} chunks have no vector in this embedding space yet; re-embed them first.")
        target.role, target.traffic_percent = ChatbotSpace.Role.TESTING, traffic_percent
        target.save(update_fields=["role", "traffic_percent"])
        chatbot_content_changed(chatbot_id=chatbot.pk)
    return target


def chatbot_space_test_end(*, chatbot: Chatbot, space: EmbeddingSpace) -> None:
    """The variant ``space`` stops serving, or stops being built for a test that never began
    (its vectors are kept; the space is retired unless it became the active one)."""
    with transaction.atomic():
        links = ChatbotSpace.objects.filter(chatbot=chatbot, space=space).exclude(role=ChatbotSpace.Role.ACTIVE)
        serving = links.filter(role=ChatbotSpace.Role.TESTING).exists()
        links.update(role=ChatbotSpace.Role.RETIRED, traffic_percent=0)
        if serving:
            chatbot_content_changed(chatbot_id=chatbot.pk)


def ingestion_spaces(*, chatbot: Chatbot) -> list[EmbeddingSpace]:
    """Spaces new content is embedded into: the active one's store first, then those of any
    being built or tested (an adapter space's documents live in its store, once)."""
    chatbot_space_ensure_active(chatbot=chatbot)
    links = ChatbotSpace.objects.filter(
        chatbot=chatbot, role__in=[ChatbotSpace.Role.ACTIVE, ChatbotSpace.Role.BUILDING, ChatbotSpace.Role.TESTING]
    )
    links = sorted(links.select_related("space__vectors_from"), key=lambda link: link.role != ChatbotSpace.Role.ACTIVE)
    stores = {}
    for link in links:
        stores.setdefault(link.space.store.pk, link.space.store)
    return list(stores.values())
