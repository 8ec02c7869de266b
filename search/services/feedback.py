"""Feedback on a search's results, and the hybrid blend it teaches."""

from __future__ import annotations

from django.db import transaction

from search.logbuffer import search_logs_flush
from search.models import SearchBlend, SearchFeedback, SearchLog
from tenants import inputs
from tenants.errors import NotFound
from tenants.models import ApiKey, Tenant
from tenants.services import chatbot_content_changed


def _blend_vote(*, tenant: Tenant, log: SearchLog, chunk_id: int, helpful: bool) -> None:
    """Which list was right about a chunk of a hybrid search: a helpful chunk that the keyword
    list ranked above the vector list is a vote for keywords (and the other way round); an
    unhelpful one is a vote against the list that ranked it higher."""
    if log.mode != "hybrid" or chunk_id not in (log.result_chunk_ids or []):
        return
    ranks = log.result_ranks or []
    position = log.result_chunk_ids.index(chunk_id)
    if position >= len(ranks):
        return
    semantic, keyword = (rank if rank is not None else 10**6 for rank in ranks[position])
    if semantic == keyword:
        return
    keyword_won = (keyword < semantic) == helpful
    with transaction.atomic():
        blend, _ = SearchBlend.objects.select_for_update().get_or_create(
            tenant=tenant, chatbot_id=log.chatbot_id, defaults={"keyword_votes": 0, "vector_votes": 0}
        )
        before = round(blend.keyword_factor, 1)
        if keyword_won:
            blend.keyword_votes += 1
        else:
            blend.vector_votes += 1
        blend.save(update_fields=["keyword_votes", "vector_votes", "updated_at"])
        if round(blend.keyword_factor, 1) != before:  # cached answers were blended with the old factor
            chatbot_content_changed(chatbot_id=log.chatbot_id)


def search_feedback_create(
    *,
    tenant: Tenant,
    query_id,
    helpful: bool,
    chunk_id: int | None = None,
    comment: str = "",
    api_key: ApiKey | None = None,
) -> SearchFeedback:
    log = SearchLog.objects.for_tenant(tenant).filter(query_id=query_id).first()
    if log is None:
        search_logs_flush()  # the search may still be queued
        log = SearchLog.objects.for_tenant(tenant).filter(query_id=query_id).first()
    if log is None or (api_key is not None and api_key.chatbot_id not in (None, log.chatbot_id)):
        raise NotFound("Search not found.", field="query_id")
    comment = inputs.text(comment, field="comment", max_length=2000)
    if chunk_id is not None and chunk_id not in (log.result_chunk_ids or []):
        raise NotFound("That chunk was not among this search's results.", field="chunk_id")
    if chunk_id is not None and not SearchFeedback.objects.filter(search=log, chunk_id=chunk_id).exists():
        _blend_vote(tenant=tenant, log=log, chunk_id=chunk_id, helpful=helpful)  # one vote per result
    return SearchFeedback.objects.create(
        tenant=tenant,
        search=log,
        chatbot_id=log.chatbot_id,
        helpful=helpful,
        chunk_id=chunk_id,
        comment=comment,
        api_key=api_key,
    )
