import json
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from tenants.models import ApiKey, Chatbot, Tenant
from tenants.scoping import cross_tenant_context, tenant_context
from tenants.services import api_key_create, tenant_bootstrap

DEMO_TENANT = "Demo Company"
DEMO_USER = "demo"
DEMO_KEY_NAME = "make run"


class Command(BaseCommand):
    help = "Create the demo tenant if missing, give its owner a fresh password and a fresh API key, print them."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        with cross_tenant_context("manage.py ensure_demo"):  # which tenant is the demo one
            tenant_id = Tenant.objects.filter(name=DEMO_TENANT).order_by("id").values_list("id", flat=True).first()
        with transaction.atomic():
            if tenant_id is None:
                self._ensure(None, options)
            else:
                with tenant_context(tenant_id):
                    self._ensure(Tenant.objects.get(pk=tenant_id), options)

    def _ensure(self, tenant, options):
        password = secrets.token_urlsafe(9)
        if tenant is None:
            bundle = tenant_bootstrap(
                name=DEMO_TENANT, chatbot_name="Support bot", username=DEMO_USER, password=password
            )
            tenant, chatbot, raw_key = bundle.tenant, bundle.chatbot, bundle.api_key
            with tenant_context(tenant):  # revoked and renewed on the next start
                ApiKey.objects.for_tenant(tenant).update(name=DEMO_KEY_NAME)
        else:
            user = get_user_model().objects.get(username=DEMO_USER)
            user.set_password(password)
            user.save(update_fields=["password"])
            chatbot = Chatbot.objects.for_tenant(tenant).order_by("id").first()
            ApiKey.objects.for_tenant(tenant).filter(name=DEMO_KEY_NAME, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            raw_key = api_key_create(
                tenant=tenant, name=DEMO_KEY_NAME, created_by=user, scopes=ApiKey.Scope.values
            ).raw_key
        result = {
            "tenant_id": tenant.pk,
            "chatbot_id": chatbot.pk,
            "api_key": raw_key,
            "username": DEMO_USER,
            "password": password,
        }
        self.stdout.write(
            json.dumps(result) if options["json"] else "\n".join(f"{k:>10}: {v}" for k, v in result.items())
        )
