"""Plans that do not depend on what the statistics know about a tenant.

A brand-new tenant's rows are not in PostgreSQL's statistics until autovacuum analyses the shared
tables (on a large table it may not for a long time): the planner then estimates one row for the
tenant's or chatbot's condition and picks nested loops whose inner side rescans the tenant's rows
on every loop — a 3 ms statement becomes 35 ms, an ingestion step quadratic or cubic
(tests/search/test_plans.py measures each on such a skewed database).

Statements that read all of a chatbot's rows anyway (exact vector search, candidate counts,
duplicate candidates) pin hash joins for their transaction with ``plan_pinned``: their cost is
then linear in the chatbot's rows whatever the estimates say. Statements that look rows up by key
are written as key lookups (``= ANY(ARRAY(...))`` on a composite index that leads with the
constant column) so no estimate can turn them into scans. The settings are transaction-local
(``set_config(..., true)``): call it inside ``transaction.atomic``.
"""

from __future__ import annotations

HASH_JOINS = {"enable_nestloop": "off"}


def plan_pinned(cursor, settings: dict[str, str] = HASH_JOINS) -> None:
    """Transaction-local planner settings for the statements that follow, in one round trip."""
    calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
    cursor.execute(f"SELECT {calls}", [item for pair in settings.items() for item in pair])
