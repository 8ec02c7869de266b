"""``search_answer``: the one search pipeline behind every entry point.

``POST /api/search`` (the DRF view and the fast path in front of Django), hybrid search, the
dashboard playground — and any adapter added later (OpenAI's vector-store search, Dify's
retrieval) — each parse their own wire format into ``SearchArguments``, name their caller as a
``SearchPrincipal``, call this, and render the ``SearchResult`` in their own shape. What every
search must do happens here once, in this order:

1. access: the principal may search, and sees the chatbot (another tenant's, or one outside a
   key's chatbot restriction, is ``NotFound``);
2. throttle and cache: the request is counted against its key's per-minute limit in the same
   Redis round trip that reads its cached answer and queues that answer's log row (``Throttled``
   when over the limit; a dashboard member is not limited);
3. run: without a cached answer, ``search_run`` (vectors, keywords, fusion, the cache entry, the
   log row);
4. touch: the key's ``last_used_at``, to the minute.
"""

from __future__ import annotations

import time

from search.arguments import SearchArguments
from search.services.cached import cached_search_build, search_cached
from search.services.result import SearchResult
from search.services.run import search_run
from search.services.serving import assignment_key, serving_for
from tenants.errors import NotFound, Throttled
from tenants.models import Chatbot, Tenant
from tenants.principal import SearchPrincipal, scope_refused
from tenants.ratelimit import rate_check, rate_hit
from tenants.scoping import tenant_context
from tenants.selectors import chatbot_get
from tenants.services import api_key_touch


def search_access_check(*, principal: SearchPrincipal, chatbot_id: int, chatbot: Chatbot | None = None) -> Chatbot:
    """The chatbot this principal may search, or ``PermissionDenied`` / ``NotFound``. ``chatbot``:
    one the caller has read already for this principal (the fast path's access row); else it is
    read here, in the principal's tenant scope."""
    if not principal.allows("search"):
        raise scope_refused(principal.scope_label, ("search",))
    if not principal.may_see(chatbot_id):
        raise NotFound("Chatbot not found.", field="chatbot_id")
    if chatbot is None:
        chatbot = chatbot_get(tenant=Tenant(pk=principal.tenant_id), chatbot_id=chatbot_id)
    if chatbot.pk != chatbot_id or chatbot.tenant_id != principal.tenant_id:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    return chatbot


def search_answer(*, principal: SearchPrincipal, args: SearchArguments, chatbot: Chatbot | None = None) -> SearchResult:
    """One search for ``principal``, from access check to log row (see the module docstring).
    ``chatbot``: what the caller's own access check read for this principal (``search_access``)."""
    with tenant_context(principal.tenant_id):
        chatbot = search_access_check(principal=principal, chatbot_id=args.chatbot_id, chatbot=chatbot)
        began = time.perf_counter()
        assignment = assignment_key(query=args.query, user_id=args.end_user, conversation_id=args.conversation_id)
        serving = serving_for(chatbot, assignment=assignment)
        request = cached_search_build(chatbot=chatbot, args=args, serving=serving, principal=principal)
        rate = rate_check(key_id=principal.api_key_id, plan=principal.plan) if principal.is_key else None
        result, counted = search_cached(request, began=began, rate=rate)
        if rate is not None and not counted:  # Redis could not count it with the cache read
            retry_after = rate_hit(rate)
            if retry_after is not None:
                raise Throttled(retry_after)
        if result is None:
            result = search_run(chatbot=chatbot, args=args, principal=principal, serving=serving, checked=request)
        api_key_touch(principal=principal)
    return result
