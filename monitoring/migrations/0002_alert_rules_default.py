"""The default alert rules: the global (system) ones, and each existing tenant's (a tenant created
later gets its own from monitoring/signals.py). Copies of monitoring/alerts/rules.py's defaults as
they were when this migration was written."""

from django.db import migrations

TENANT_DEFAULTS = [
    ("training_failure_rate", ">", 0.5, 24 * 60, "warning", "Training jobs failing"),
    ("search_p95_ms", ">", 500.0, 15, "warning", "Slow searches (p95)"),
    ("search_zero_result_rate", ">", 0.3, 60, "warning", "Many searches without results"),
    ("upload_failure_rate", ">", 0.2, 24 * 60, "warning", "Uploads failing"),
    ("retrieval_ndcg_drop", ">", 0.03, 24 * 60, "critical", "Retrieval quality dropped"),
    ("index_recall", "<", 0.95, 60, "warning", "Vector index recall below target"),
]
GLOBAL_DEFAULTS = [
    ("disk_used_percent", ">", 90.0, 5, "critical", "Disk almost full"),
    ("memory_used_percent", ">", 90.0, 5, "critical", "Memory almost exhausted"),
    ("queue_backlog", ">", 1000.0, 5, "warning", "Task queue backlog"),
    ("db_connections", ">", 80.0, 5, "warning", "Database connections near max_connections"),
    ("db_cache_hit_ratio", "<", 0.9, 15, "warning", "Database cache hit ratio low"),
    ("db_dead_tuple_ratio", ">", 0.2, 60, "info", "Many dead rows (vacuum behind)"),
]


def create(apps, schema_editor):
    AlertRule = apps.get_model("monitoring", "AlertRule")
    Tenant = apps.get_model("tenants", "Tenant")
    owners = [(None, "global", GLOBAL_DEFAULTS)] + [(t, "chatbot", TENANT_DEFAULTS) for t in Tenant.objects.all()]
    for tenant, scope, rows in owners:
        for metric, condition, threshold, window, severity, name in rows:
            if AlertRule.objects.filter(tenant=tenant, metric=metric, is_default=True).exists():
                continue
            AlertRule.objects.create(
                tenant=tenant,
                scope=scope,
                metric=metric,
                condition=condition,
                threshold=threshold,
                window_minutes=window,
                severity=severity,
                name=name,
                description=f"Default rule: {metric} {condition} {threshold:g}.",
                is_default=True,
            )


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0001_initial"), ("tenants", "0007_search_context_without_space")]

    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
