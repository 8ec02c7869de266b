"""``flush`` (empties every table; the test runner's reset between transactional tests) as the
owner role: TRUNCATE ignores row-level security, so the app role is not granted it."""

from django.core.management.commands.flush import Command as FlushCommand

from tenants import dbroles


class Command(FlushCommand):
    def handle(self, **options):
        with dbroles.as_owner(options["database"]):
            return super().handle(**options)
