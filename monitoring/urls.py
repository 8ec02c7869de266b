from django.urls import path

from monitoring.apis import metrics

urlpatterns = [
    path("metrics/system", metrics.SystemMetricsApi.as_view(), name="api-metrics-system"),
    path("metrics/database", metrics.DatabaseMetricsApi.as_view(), name="api-metrics-database"),
    path("metrics/search", metrics.SearchMetricsApi.as_view(), name="api-metrics-search"),
    path("metrics/training", metrics.TrainingMetricsApi.as_view(), name="api-metrics-training"),
    path("analytics/<int:chatbot_id>", metrics.ChatbotAnalyticsApi.as_view(), name="api-analytics"),
]
