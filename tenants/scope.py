"""The scope value itself (no Django models here: the database backend reads it while models
load). Entered and left through ``tenants.scoping``."""

from __future__ import annotations

import contextvars
from typing import NamedTuple


class Scope(NamedTuple):
    tenant_id: int | None = None
    user_id: int | None = None
    cross_tenant: str = ""  # why this block may read every tenant ("" = it may not)

    def settings(self) -> list[str]:
        """Values for ``app.tenant_id``, ``app.user_id`` and ``app.cross_tenant``."""
        return [
            "" if self.tenant_id is None else str(int(self.tenant_id)),
            "" if self.user_id is None else str(int(self.user_id)),
            self.cross_tenant,
        ]


NO_SCOPE = Scope()
_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar("tenant_scope", default=NO_SCOPE)


def current_scope() -> Scope:
    return _scope.get()
