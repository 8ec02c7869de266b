from django.urls import path

from monitoring.apis import alerts, metrics

urlpatterns = [
    path("metrics/system", metrics.SystemMetricsApi.as_view(), name="api-metrics-system"),
    path("metrics/database", metrics.DatabaseMetricsApi.as_view(), name="api-metrics-database"),
    path("metrics/search", metrics.SearchMetricsApi.as_view(), name="api-metrics-search"),
    path("metrics/training", metrics.TrainingMetricsApi.as_view(), name="api-metrics-training"),
    path("analytics/<int:chatbot_id>", metrics.ChatbotAnalyticsApi.as_view(), name="api-analytics"),
    path("alerts/rules", alerts.AlertRuleListApi.as_view(), name="api-alert-rules"),
    path("alerts/rules/<int:rule_id>", alerts.AlertRuleDetailApi.as_view(), name="api-alert-rule"),
    path("alerts", alerts.AlertListApi.as_view(), name="api-alerts"),
    path("alerts/<int:alert_id>", alerts.AlertDetailApi.as_view(), name="api-alert"),
    path("alerts/<int:alert_id>/acknowledge", alerts.AlertAcknowledgeApi.as_view(), name="api-alert-acknowledge"),
    path("alerts/<int:alert_id>/resolve", alerts.AlertResolveApi.as_view(), name="api-alert-resolve"),
]
