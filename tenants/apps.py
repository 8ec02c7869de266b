from django.apps import AppConfig
from django.db.models.signals import post_migrate


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and access"

    def ready(self):
        from tenants import checks  # noqa: F401  (registers the system checks)
        from tenants.rls import post_migrate_apply

        # After every app has migrated (the signal is sent once per app; this app's is enough).
        post_migrate.connect(post_migrate_apply, sender=self, dispatch_uid="tenants.rls")
