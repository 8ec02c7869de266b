"""System checks of the tenant isolation setup (``manage.py check``, and every server start)."""

from __future__ import annotations

from django.core import checks


@checks.register(checks.Tags.security, deploy=False)
def database_roles_check(app_configs=None, **kwargs):
    from django.conf import settings

    app = settings.DATABASE_APP.get("USER")
    found = []
    if settings.DATABASE_MAINTENANCE.get("USER") == app:
        found.append(
            checks.Warning(
                "The app and maintenance database roles are the same: the database cannot keep tenants apart "
                "(row-level security lets that role read every tenant).",
                hint="Create the roles `manage.py database_roles` prints and set DATABASE_URL, DATABASE_OWNER_URL "
                "and DATABASE_MAINTENANCE_URL to three different roles.",
                id="tenants.W001",
            )
        )
    return found
