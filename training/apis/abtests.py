"""A/B tests of model versions: ``/api/models/{chatbot_id}/ab-test`` (start, live report) and its
``promote`` and ``stop`` actions."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from search.logbuffer import search_logs_flush
from tenants.apis import TenantApi
from tenants.serializers import JsonBooleanField, JsonIntegerField, StrictSerializer, id_field
from training.models import ABTest
from training.selectors import ab_test_get
from training.services import ab_test_promote, ab_test_report, ab_test_start, ab_test_stop


def ab_test_payload(test: ABTest, *, report: bool = True) -> dict:
    body = {
        "test_id": test.pk,
        "chatbot_id": test.chatbot_id,
        "status": test.status,
        "percent": test.progress,
        "variant_version_id": test.variant_id,
        "variant_number": test.variant.number,
        "control_version_id": test.control_id,
        "control_space": test.control_space,
        "traffic_percent": test.traffic_percent,
        "min_searches": test.min_searches,
        "max_days": test.max_days,
        "reason": test.reason,
        "created_at": test.created_at,
        "started_at": test.started_at,
        "ended_at": test.ended_at,
    }
    if report:
        body["report"] = ab_test_report(test)
    return body


class ABTestStartRequestSerializer(StrictSerializer):
    variant_version_id = id_field(json=True)
    traffic_percent = JsonIntegerField(min_value=1, max_value=50, default=10, help_text="Share of searches, 1-50.")
    min_searches = JsonIntegerField(
        min_value=10, max_value=10_000_000, default=1000, help_text="Searches per arm before a verdict."
    )
    max_days = JsonIntegerField(min_value=1, max_value=90, default=14, help_text="The test ends by itself after this.")
    force = JsonBooleanField(required=False, default=False, help_text="Test a version the gate refused (audited).")


class ABTestSerializer(serializers.Serializer):
    test_id = serializers.IntegerField()
    chatbot_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ABTest.Status.choices)
    percent = serializers.IntegerField(help_text="Embedding the variant: percent done.")
    variant_version_id = serializers.IntegerField()
    variant_number = serializers.IntegerField()
    control_version_id = serializers.IntegerField(allow_null=True, help_text="null: the base model is the control.")
    control_space = serializers.CharField()
    traffic_percent = serializers.IntegerField()
    min_searches = serializers.IntegerField()
    max_days = serializers.IntegerField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    report = serializers.JSONField(
        required=False,
        help_text="Per arm (control, variant): searches, feedback, helpful, helpful_rate, zero_result_rate, "
        "low_score_rate, mean_top_score, p50_ms, p95_ms; difference (variant - control helpful rate), p_value "
        "(two-proportion z-test), significant, winner, searches_still_needed, guardrail, verdict.",
    )


class ABTestApi(TenantApi):
    scopes = {"get": "read", "post": "write"}
    parser_classes = [JSONParser]

    @extend_schema(operation_id="models_ab_test", responses={200: ABTestSerializer}, tags=["models"])
    def get(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        search_logs_flush()  # count searches still queued for writing
        return Response(ab_test_payload(ab_test_get(tenant=self.tenant, chatbot=chatbot)))

    @extend_schema(operation_id="models_ab_test_start", request=ABTestStartRequestSerializer,
                   responses={202: ABTestSerializer}, tags=["models"])  # fmt: skip
    def post(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        params = ABTestStartRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        test = ab_test_start(
            tenant=self.tenant,
            chatbot=chatbot,
            variant_version_id=data["variant_version_id"],
            traffic_percent=data["traffic_percent"],
            min_searches=data["min_searches"],
            max_days=data["max_days"],
            force=data["force"],
            requested_by=str(self.api_key or request.user),
        )
        test.refresh_from_db()
        return Response(ab_test_payload(test), status=202)


class ABTestPromoteApi(TenantApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="models_ab_test_promote", request=None, responses={200: ABTestSerializer},
                   tags=["models"])  # fmt: skip
    def post(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        test = ab_test_promote(tenant=self.tenant, chatbot=chatbot, requested_by=str(self.api_key or request.user))
        return Response(ab_test_payload(test))


class ABTestStopApi(TenantApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="models_ab_test_stop", request=None, responses={200: ABTestSerializer},
                   tags=["models"])  # fmt: skip
    def post(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        test = ab_test_stop(tenant=self.tenant, chatbot=chatbot, requested_by=str(self.api_key or request.user))
        return Response(ab_test_payload(test))
