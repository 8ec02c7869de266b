"""``migrate`` as the owner role (DATABASE_OWNER_URL): the app role owns nothing and may not
change the schema. Row-level security is (re)applied at the end (``tenants/rls.py``)."""

from django.core.management.commands.migrate import Command as MigrateCommand

from chatbot_training import dbroles


class Command(MigrateCommand):
    def handle(self, *args, **options):
        with dbroles.as_owner(options["database"]):
            return super().handle(*args, **options)
