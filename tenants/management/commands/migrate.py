"""``migrate`` as the owner role (DATABASE_OWNER_URL): the app role owns nothing and may not
change the schema. Row-level security is (re)applied at the end (``tenants/rls.py``)."""

from django.core.management.commands.migrate import Command as MigrateCommand

from tenants import dbroles


class Command(MigrateCommand):
    def handle(self, *args, **options):
        from tenants.scoping import no_tenant_context

        # No scope: a caller's cross-tenant scope would route migrations' queries to the
        # maintenance connection, which then waits on the locks of the migration's own transaction.
        with no_tenant_context(), dbroles.as_owner(options["database"]):
            return super().handle(*args, **options)
