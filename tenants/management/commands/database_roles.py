"""Print the SQL a database administrator runs once (as a superuser) on an external PostgreSQL:
the owner, app and maintenance roles, the database handed to the owner, and, inside the
database, the extensions and the leakproof search operators (see ``tenants/dbroles.py``)."""

from django.core.management.base import BaseCommand

from tenants import dbroles


class Command(BaseCommand):
    help = "Print the SQL that creates the owner, app and maintenance roles for an external PostgreSQL."

    def add_arguments(self, parser):
        parser.add_argument("--database", default="chatbot_training")
        parser.add_argument("--owner", default=dbroles.OWNER_ROLE)
        parser.add_argument("--app", default=dbroles.APP_ROLE)
        parser.add_argument("--maintenance", default=dbroles.MAINTENANCE_ROLE)

    def handle(self, *args, **options):
        database, owner, app = options["database"], options["owner"], options["app"]
        maintenance = options["maintenance"]
        self.stdout.write("-- as a superuser, connected to any database:")
        for statement in dbroles.setup_sql(database=database, owner=owner, app=app, maintenance=maintenance):
            self.stdout.write(statement + ";")
        self.stdout.write(f'\\connect "{database}"')  # psql: the rest runs inside the database
        for statement in dbroles.database_sql(owner=owner):
            self.stdout.write(statement + ";")
        self.stdout.write(
            f"-- set passwords with ALTER ROLE ... PASSWORD, then DATABASE_URL=postgres://{app}:...@host/{database},"
            f" DATABASE_OWNER_URL=postgres://{owner}:...@host/{database} and"
            f" DATABASE_MAINTENANCE_URL=postgres://{maintenance}:...@host/{database}"
        )
