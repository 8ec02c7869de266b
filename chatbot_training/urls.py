from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from knowledge import views as knowledge_views
from monitoring import views as monitoring_views
from search import views as search_views
from tenants import views as tenant_views
from tenants.apis import ChatbotListApi
from training import views as training_views

api_patterns = [
    path("chatbots", ChatbotListApi.as_view(), name="api-chatbots"),
    path("", include("knowledge.urls")),
    path("", include("search.urls")),
    path("", include("training.urls")),
    path("", include("monitoring.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]

urlpatterns = [
    path("api/", include(api_patterns)),
    path("v1/", include("search.urls_v1")),  # the OpenAI-compatible interface
    path("admin/", admin.site.urls),
    path("healthz", monitoring_views.healthz, name="healthz"),
    path("readyz", monitoring_views.readyz, name="readyz"),
    path("metrics", monitoring_views.metrics_export, name="prometheus-django-metrics"),
    path("login/", tenant_views.ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", knowledge_views.home, name="dashboard-home"),
    path("tenant/switch", tenant_views.tenant_switch, name="dashboard-tenant-switch"),
    path("keys/", tenant_views.api_keys, name="dashboard-api-keys"),
    path("audit/", tenant_views.audit_log, name="dashboard-audit"),
    path("monitoring/", monitoring_views.monitoring_page, name="dashboard-monitoring"),
    path(
        "chatbots/<int:chatbot_id>/monitoring/",
        monitoring_views.chatbot_monitoring_page,
        name="dashboard-chatbot-monitoring",
    ),  # fmt: skip
    path("alerts/", monitoring_views.alerts_page, name="dashboard-alerts"),
    path("alerts/<int:alert_id>/acknowledge", monitoring_views.alert_acknowledge_view, name="dashboard-alert-ack"),
    path("alerts/<int:alert_id>/resolve", monitoring_views.alert_resolve_view, name="dashboard-alert-resolve"),
    path("alerts/rules/new", monitoring_views.alert_rule_save_view, name="dashboard-alert-rule-new"),
    path("alerts/rules/<int:rule_id>/edit", monitoring_views.alert_rule_save_view, name="dashboard-alert-rule-edit"),
    path("alerts/rules/<int:rule_id>/toggle", monitoring_views.alert_rule_toggle_view, name="dashboard-rule-toggle"),
    path("alerts/rules/<int:rule_id>/delete", monitoring_views.alert_rule_delete_view, name="dashboard-rule-delete"),
    path("keys/<int:key_id>/revoke", tenant_views.api_key_revoke_view, name="dashboard-api-key-revoke"),
    path("keys/<int:key_id>/rotate", tenant_views.api_key_rotate_view, name="dashboard-api-key-rotate"),
    path("chatbots/<int:chatbot_id>/", knowledge_views.chatbot_detail, name="dashboard-chatbot"),
    path("chatbots/<int:chatbot_id>/upload", knowledge_views.chatbot_upload, name="dashboard-upload"),
    path("chatbots/<int:chatbot_id>/search/", search_views.search_playground, name="dashboard-search"),
    path(
        "chatbots/<int:chatbot_id>/search/analytics",
        search_views.search_analytics_view,
        name="dashboard-search-analytics",
    ),
    path(
        "chatbots/<int:chatbot_id>/search/export.csv",
        search_views.search_log_export_view,
        name="dashboard-search-log-export",
    ),
    path("chatbots/<int:chatbot_id>/faq", search_views.faq_answer_add, name="dashboard-faq-add"),
    path("chatbots/<int:chatbot_id>/optimize/", search_views.optimize_view, name="dashboard-optimize"),
    path("chatbots/<int:chatbot_id>/training/", training_views.training_view, name="dashboard-training"),
    path(
        "chatbots/<int:chatbot_id>/training/start", training_views.training_start_view, name="dashboard-training-start"
    ),
    path(
        "chatbots/<int:chatbot_id>/training/pairs", training_views.training_pairs_view, name="dashboard-training-pairs"
    ),
    path(
        "chatbots/<int:chatbot_id>/training/rollback",
        training_views.model_rollback_view,
        name="dashboard-model-rollback",
    ),
    path("chatbots/<int:chatbot_id>/ab-test/", training_views.ab_test_view, name="dashboard-ab-test"),
    path("chatbots/<int:chatbot_id>/gap-answered", training_views.gap_answered_view, name="dashboard-gap-answered"),
    path(
        "chatbots/<int:chatbot_id>/search/feedback",
        search_views.playground_feedback_view,
        name="dashboard-search-feedback",
    ),
    path(
        "chatbots/<int:chatbot_id>/training/continuous",
        training_views.continuous_learning_view,
        name="dashboard-continuous-learning",
    ),
    path("chatbots/<int:chatbot_id>/ab-test/start", training_views.ab_test_start_view, name="dashboard-ab-start"),
    path("chatbots/<int:chatbot_id>/ab-test/promote", training_views.ab_test_promote_view, name="dashboard-ab-promote"),
    path("chatbots/<int:chatbot_id>/ab-test/stop", training_views.ab_test_stop_view, name="dashboard-ab-stop"),
    path("training/jobs/<int:job_id>/cancel", training_views.training_cancel_view, name="dashboard-training-cancel"),
    path("training/versions/<int:version_id>/deploy", training_views.model_deploy_view, name="dashboard-model-deploy"),
    path("documents/<int:document_id>/", knowledge_views.document_detail, name="dashboard-document"),
    path(
        "documents/<int:document_id>/reprocess",
        knowledge_views.document_reprocess_view,
        name="dashboard-document-reprocess",
    ),
    path("documents/<int:document_id>/delete", knowledge_views.document_delete_view, name="dashboard-document-delete"),
]

handler500 = "monitoring.views.server_error"
handler404 = "monitoring.views.not_found"
