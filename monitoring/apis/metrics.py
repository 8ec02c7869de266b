"""Operator and activity figures: ``/api/metrics/{system,database,search,training}`` and
``/api/analytics/{chatbot_id}``.

Who sees what: system and database figures are operator data. A tenant's API key (read scope)
or an owner/admin session gets the tenant's share (its queued and running jobs; its documents,
chunks, vectors, bytes, index sizes and recall); a staff session also gets ``server``: the whole
host and database (CPU, memory, disk, processes, queues and workers; sizes, connections, cache hit
ratio, long queries, vector indexes, slow statements). Viewers get 403. Search, training and
chatbot analytics are the tenant's own activity: any read key or member.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from monitoring.figures import activity, database, share, system
from search.logbuffer import search_logs_flush
from search.selectors import knowledge_gaps, search_analytics
from tenants.apis import TenantApi
from tenants.errors import PermissionDenied
from tenants.serializers import query_params


class MetricsDaysQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=365, default=7, help_text="The last 1–365 days.")


class OperatorMetricsSerializer(serializers.Serializer):
    scope = serializers.CharField(help_text="tenant, or server for a staff session.")
    tenant = serializers.JSONField(help_text="The tenant's share.")
    server = serializers.JSONField(required=False, help_text="Staff only: the whole host or database.")


class SearchMetricsSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    searches = serializers.IntegerField()
    p50_ms = serializers.FloatField(allow_null=True)
    p95_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)
    cache_hit_rate = serializers.FloatField(allow_null=True)
    zero_result_rate = serializers.FloatField(allow_null=True)
    low_score_rate = serializers.FloatField(allow_null=True)
    per_chatbot = serializers.JSONField()
    daily = serializers.JSONField()


class TrainingMetricsSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    jobs = serializers.IntegerField()
    by_status = serializers.JSONField()
    by_type = serializers.JSONField()
    failure_rate = serializers.FloatField(allow_null=True)
    duration_seconds = serializers.JSONField()
    running = serializers.IntegerField()
    queued = serializers.IntegerField()


class ChatbotAnalyticsSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    name = serializers.CharField()
    days = serializers.IntegerField()
    content = serializers.JSONField()
    search = serializers.JSONField()
    feedback = serializers.JSONField()
    knowledge_gaps = serializers.JSONField()
    training = serializers.JSONField()
    ab_test = serializers.JSONField(allow_null=True)


def _days(request) -> int:
    params = MetricsDaysQuerySerializer(data=query_params(request))
    params.is_valid(raise_exception=True)
    return params.validated_data["days"]


class OperatorApi(TenantApi):
    """System and database figures: a read key or an owner/admin session (viewers: 403)."""

    scopes = {"get": "read"}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if self.api_key is None and not (self.membership.can_write or request.user.is_staff):
            raise PermissionDenied("System and database figures are for owners and admins of the tenant.")

    @property
    def staff(self) -> bool:
        return self.api_key is None and self.request.user.is_staff


class SystemMetricsApi(OperatorApi):
    @extend_schema(operation_id="metrics_system", responses={200: OperatorMetricsSerializer}, tags=["monitoring"])
    def get(self, request):
        body = {"scope": "tenant", "tenant": {"tenant_id": self.tenant.pk, **activity.job_backlog(tenant=self.tenant)}}
        if self.staff:
            body.update(scope="server", server=system.system_figures())
        return Response(body)


class DatabaseMetricsApi(OperatorApi):
    @extend_schema(operation_id="metrics_database", responses={200: OperatorMetricsSerializer}, tags=["monitoring"])
    def get(self, request):
        body = {"scope": "tenant", "tenant": share.tenant_share(tenant=self.tenant)}
        if self.staff:
            body.update(scope="server", server=database.database_figures())
        return Response(body)


class SearchMetricsApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="metrics_search", parameters=[MetricsDaysQuerySerializer],
                   responses={200: SearchMetricsSerializer}, tags=["monitoring"])  # fmt: skip
    def get(self, request):
        days = _days(request)
        search_logs_flush()  # include searches still queued for writing
        since = timezone.now() - timedelta(days=days)
        return Response({"days": days, **activity.search_figures(tenant=self.tenant, since=since)})


class TrainingMetricsApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="metrics_training", parameters=[MetricsDaysQuerySerializer],
                   responses={200: TrainingMetricsSerializer}, tags=["monitoring"])  # fmt: skip
    def get(self, request):
        days = _days(request)
        since = timezone.now() - timedelta(days=days)
        return Response({"days": days, **activity.training_figures(tenant=self.tenant, since=since)})


def chatbot_analytics(*, tenant, chatbot, days: int) -> dict:
    """Everything about one chatbot in one answer (the API and the dashboard's analytics page)."""
    from training.apis import ab_test_payload, model_history
    from training.models import ABTest
    from training.selectors import evaluation_latest, evaluation_series

    search_logs_flush()
    since = timezone.now() - timedelta(days=days)
    low = settings.SEARCH_LOW_SCORE
    searched = search_analytics(tenant=tenant, chatbot_id=chatbot.pk, days=days, low_score=low)
    gaps = knowledge_gaps(tenant=tenant, chatbot_id=chatbot.pk, days=days, low_score=low)
    history = model_history(tenant=tenant, chatbot=chatbot)
    active = next((entry for entry in reversed(history) if entry.get("status") == "active"), None)
    live = ABTest.objects.for_tenant(tenant).filter(chatbot=chatbot, status__in=ABTest.LIVE).first()
    return {
        "chatbot_id": chatbot.pk,
        "name": chatbot.name,
        "days": days,
        "content": activity.content_figures(tenant=tenant, chatbot=chatbot, since=since),
        "search": {key: value for key, value in searched.items() if key not in ("feedback", "chatbot_id", "days")},
        "feedback": searched["feedback"],
        "knowledge_gaps": {"groups": len(gaps), "queries": sum(g.get("count", 1) for g in gaps), "top": gaps[:10]},
        "training": {
            **activity.training_figures(tenant=tenant, chatbot=chatbot, since=since),
            "versions": len(history),
            "active_version": active,
            "history": history,
            "evaluation": evaluation_latest(tenant=tenant, chatbot=chatbot),
            "evaluations": evaluation_series(tenant=tenant, chatbot=chatbot),
        },
        "ab_test": None if live is None else ab_test_payload(live),
    }


class ChatbotAnalyticsApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="analytics_chatbot", parameters=[MetricsDaysQuerySerializer],
                   responses={200: ChatbotAnalyticsSerializer}, tags=["monitoring"])  # fmt: skip
    def get(self, request, chatbot_id: int):
        days = _days(request)
        chatbot = self.get_chatbot(chatbot_id)
        return Response(chatbot_analytics(tenant=self.tenant, chatbot=chatbot, days=days))
