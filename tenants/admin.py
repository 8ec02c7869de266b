from django import forms
from django.contrib import admin, messages

from tenants.models import ApiKey, AuditEvent, Chatbot, Membership, Tenant
from tenants.scoping import tenant_context
from tenants.services import api_key_revoke


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class TenantAdminForm(forms.ModelForm):
    """The plan is one of API_RATE_LIMITS' plans (read when the form is built, so a plan added
    by configuration shows at once)."""

    plan = forms.ChoiceField(help_text="Requests per minute per API key.")

    class Meta:
        model = Tenant
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        from django.conf import settings

        super().__init__(*args, **kwargs)
        self.fields["plan"].choices = [
            (plan, f"{plan} — {limit:,} requests/min per key") for plan, limit in settings.API_RATE_LIMITS.items()
        ]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantAdminForm
    list_display = ["name", "slug", "plan", "is_active", "created_at"]
    list_filter = ["plan", "is_active"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__name"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(Chatbot)
class ChatbotAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "embedding_model", "chunk_size", "chunk_overlap", "content_version", "created_at"]
    list_filter = ["embedding_model", "tenant"]
    search_fields = ["name", "tenant__name"]
    readonly_fields = ["content_version"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name", "prefix", "tenant", "chatbot", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at"
    ]  # fmt: skip
    list_filter = ["tenant", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "tenant__name"]
    readonly_fields = ["prefix", "key_hash", "last_used_at", "created_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # keys are issued by the dashboard or create_tenant, which show the secret once

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        keys = list(queryset.select_related("tenant"))
        for key in keys:
            with tenant_context(key.tenant):  # the service acts for the key's tenant, as a request would
                api_key_revoke(tenant=key.tenant, api_key_id=key.pk)
        self.message_user(request, f"Revoked {len(keys)} keys.", messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Every tenant's audit events for staff; read-only (the table is append-only)."""

    list_display = ["created_at", "tenant_id", "action", "actor", "target", "ip"]
    list_filter = ["action"]
    search_fields = ["actor", "target", "=tenant_id", "ip"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
