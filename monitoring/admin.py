"""Staff operations: every tenant's alert rules, alerts (with their history) and deliveries."""

from django.contrib import admin

from monitoring.models import Alert, AlertEvent, AlertRule, Notification


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "scope", "chatbot", "metric", "condition", "threshold", "severity", "enabled"]
    list_filter = ["scope", "severity", "enabled", "is_default", "metric"]
    search_fields = ["name", "metric", "tenant__name"]
    raw_id_fields = ["tenant", "chatbot"]


class AlertEventInline(admin.TabularInline):
    model = AlertEvent
    fields = ["at", "kind", "value", "detail"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["rule", "tenant", "scope_key", "state", "value", "first_fired_at", "resolved_at"]
    list_filter = ["state", "rule__severity", "rule__metric"]
    search_fields = ["rule__name", "scope_key", "tenant__name", "message"]
    raw_id_fields = ["rule", "tenant", "chatbot", "acknowledged_by"]
    inlines = [AlertEventInline]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["event", "tenant", "channel", "target", "status", "attempts", "next_attempt_at", "sent_at"]
    list_filter = ["status", "channel"]
    search_fields = ["target", "last_error"]
    raw_id_fields = ["event", "tenant"]
