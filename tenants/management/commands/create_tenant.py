import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tenants.errors import DomainError
from tenants.services import tenant_bootstrap


class Command(BaseCommand):
    help = "Create a tenant with an owner login, a chatbot and an API key (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--chatbot", required=True)
        parser.add_argument("--username")
        parser.add_argument("--password")
        parser.add_argument("--embedding-model")
        parser.add_argument(
            "--plan",
            default="standard",
            help="Rate-limit plan (API_RATE_LIMITS): "
            + ", ".join(f"{plan} = {limit} requests/min per key" for plan, limit in settings.API_RATE_LIMITS.items()),
        )
        parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")

    def handle(self, *args, **options):
        try:
            bundle = tenant_bootstrap(
                name=options["name"],
                chatbot_name=options["chatbot"],
                username=options["username"],
                password=options["password"],
                embedding_model=options["embedding_model"],
                plan=options["plan"],
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        result = {
            "tenant_id": bundle.tenant.pk,
            "chatbot_id": bundle.chatbot.pk,
            "api_key": bundle.api_key,
            "username": bundle.username,
            "password": bundle.password,
            "plan": bundle.tenant.plan,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for key, value in result.items():
                self.stdout.write(f"{key:>10}: {value}")
