"""Continuous learning settings of a chatbot: ``/api/models/{chatbot_id}/continuous-learning``."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from tenants.apis import TenantApi
from tenants.serializers import JsonBooleanField, JsonFloatField, JsonIntegerField, StrictSerializer
from training.models import ContinuousLearning
from training.services import continuous_learning_get, continuous_learning_update
from training.services.continuous import new_pairs_since_last_version


def continuous_payload(settings: ContinuousLearning) -> dict:
    job = settings.last_job
    return {
        "chatbot_id": settings.chatbot_id,
        "enabled": settings.enabled,
        "job_type": settings.job_type,
        "min_new_pairs": settings.min_new_pairs,
        "min_days_between": settings.min_days_between,
        "auto_deploy": settings.auto_deploy,
        "auto_ab_percent": settings.auto_ab_percent,
        "new_pairs_since_last_version": new_pairs_since_last_version(settings.chatbot),
        "last_checked_at": settings.last_checked_at,
        "last_run_at": settings.last_run_at,
        "last_job": None if job is None else {"job_id": job.pk, "status": job.status, "error": job.error},
        "last_outcome": settings.last_outcome,
    }


class ContinuousLearningRequestSerializer(StrictSerializer):
    enabled = JsonBooleanField(required=False)
    job_type = serializers.ChoiceField(
        choices=["query_encoder", "incremental", "adapter"],
        required=False,
        help_text="What a run trains (hosted models: adapter).",
    )
    min_new_pairs = JsonIntegerField(min_value=1, max_value=1_000_000, required=False)
    min_days_between = JsonFloatField(min_value=0, max_value=365, required=False)
    auto_deploy = JsonBooleanField(required=False, help_text="Deploy what passes the gate.")
    auto_ab_percent = JsonIntegerField(
        min_value=0, max_value=50, required=False, help_text="1-50: A/B-test what passes instead of deploying; 0: off."
    )


class ContinuousLearningSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    enabled = serializers.BooleanField()
    job_type = serializers.CharField()
    min_new_pairs = serializers.IntegerField()
    min_days_between = serializers.FloatField()
    auto_deploy = serializers.BooleanField()
    auto_ab_percent = serializers.IntegerField()
    new_pairs_since_last_version = serializers.IntegerField()
    last_checked_at = serializers.DateTimeField(allow_null=True)
    last_run_at = serializers.DateTimeField(allow_null=True)
    last_job = serializers.JSONField(allow_null=True)
    last_outcome = serializers.CharField()


class ContinuousLearningApi(TenantApi):
    scopes = {"get": "read", "put": "write"}
    parser_classes = [JSONParser]

    @extend_schema(operation_id="models_continuous_learning", responses={200: ContinuousLearningSerializer},
                   tags=["models"])  # fmt: skip
    def get(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        return Response(continuous_payload(continuous_learning_get(chatbot=chatbot)))

    @extend_schema(operation_id="models_continuous_learning_update", request=ContinuousLearningRequestSerializer,
                   responses={200: ContinuousLearningSerializer}, tags=["models"])  # fmt: skip
    def put(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        params = ContinuousLearningRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        settings = continuous_learning_update(tenant=self.tenant, chatbot=chatbot, changes=params.validated_data)
        return Response(continuous_payload(continuous_learning_get(chatbot=settings.chatbot)))
