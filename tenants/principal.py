"""Who is asking: one ``SearchPrincipal`` per request, whichever way it came in.

``ApiKeyAuthentication`` (every DRF request with a key), the search fast path's access cache
(``search/access.py``, one prepared statement or memory) and the dashboard (a signed-in member)
each produce this same frozen value, and everything downstream — the scope and chatbot checks,
the per-key rate limit, the ``last_used_at`` touch, the search log's key or user — reads it and
nothing else. It holds ids, not model instances, so building one from a cached row costs no
query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

ALL_SCOPES = frozenset({"search", "read", "write"})
SCOPE_NEEDED = {
    "search": "search",
    "read": "read content, search logs or analytics",
    "write": "upload, reprocess or delete content",
}


@dataclass(frozen=True)
class SearchPrincipal:
    tenant_id: int
    plan: str
    scopes: frozenset[str]
    api_key_id: int | None = None
    key_prefix: str = ""
    chatbot_id: int | None = None  # a key limited to one chatbot; None: every chatbot of the tenant
    last_used_at: datetime | None = None  # the key's, as read (the touch writes at most once a minute)
    user_id: int | None = None  # a dashboard member

    @property
    def is_key(self) -> bool:
        return self.api_key_id is not None

    @property
    def source(self) -> str:
        """How the search log names the caller: ``api`` (a key) or ``dashboard`` (a member)."""
        return "api" if self.is_key else "dashboard"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def may_see(self, chatbot_id: int) -> bool:
        return self.chatbot_id is None or self.chatbot_id == chatbot_id

    @property
    def scope_label(self) -> str:
        return ", ".join(s for s in ("search", "read", "write") if s in self.scopes) or "nothing"


def principal_for_key(api_key) -> SearchPrincipal:
    """The principal of an active ``ApiKey`` (its tenant loaded or not: ``plan`` is read from it)."""
    return SearchPrincipal(
        tenant_id=api_key.tenant_id,
        plan=api_key.tenant.plan,
        scopes=frozenset(api_key.scopes or ()),
        api_key_id=api_key.pk,
        key_prefix=api_key.prefix,
        chatbot_id=api_key.chatbot_id,
        last_used_at=api_key.last_used_at,
    )


def principal_for_member(membership) -> SearchPrincipal:
    """A dashboard member: any member may search and read, owners and admins write too."""
    scopes = ALL_SCOPES if membership.can_write else ALL_SCOPES - {"write"}
    return SearchPrincipal(
        tenant_id=membership.tenant_id,
        plan=membership.tenant.plan,
        scopes=scopes,
        user_id=membership.user_id,
    )


def scope_refused(scope_label: str, needed: tuple[str, ...]):
    """The one refusal of a key whose scopes (``scope_label``) hold none of ``needed``."""
    from tenants.errors import PermissionDenied

    wanted = " or ".join(f"'{s}'" for s in needed) or "another"
    return PermissionDenied(
        f"This API key's scopes ({scope_label}) do not allow this: it needs the {wanted} "
        f"scope to {SCOPE_NEEDED.get(needed[0], 'do this') if needed else 'do this'}. Create a key with "
        "that scope on the dashboard's API keys page."
    )
