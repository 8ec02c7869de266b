"""Search optimization of a chatbot: ``/api/optimize/{chatbot_id}`` (start a run, see the tuning
and the last runs) and ``/api/optimize/runs/{run_id}``."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from search.models import OptimizationRun, SearchTuning
from search.selectors import optimization_run_get, optimization_runs, search_tuning_get
from search.services.optimize import ACTIONS, optimization_start
from tenants.apis import TenantApi
from tenants.serializers import JsonFloatField, StrictSerializer


def tuning_payload(tuning: SearchTuning | None) -> dict:
    """The chatbot's tuning, or the settings' defaults it searches with until a run measures it."""
    if tuning is None:
        return {
            "tuned": False,
            "ef_search": None,
            "exact_max": settings.SEARCH_EXACT_MAX,
            "recall_target": None,
            "measured_recall": None,
            "measured_at": None,
            "source_run_id": None,
        }
    return {
        "tuned": True,
        "ef_search": tuning.ef_search,
        "exact_max": tuning.exact_max,
        "recall_target": tuning.recall_target,
        "measured_recall": tuning.measured_recall,
        "measured_at": tuning.measured_at,
        "source_run_id": tuning.source_run_id,
    }


def optimization_run_payload(
    run: OptimizationRun, tuning: SearchTuning | None = None, *, with_tuning: bool = False
) -> dict:
    """A run; ``with_tuning``: and the chatbot's tuning now (``tuning``, None for the defaults)."""
    payload = {
        "run_id": run.pk,
        "chatbot_id": run.chatbot_id,
        "status": run.status,
        "percent": run.percent,
        "stage": run.stage,
        "actions": run.actions,
        "recall_target": run.recall_target,
        "results": run.results,
        "error": run.error,
        "requested_by": run.requested_by,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "status_url": f"/api/optimize/runs/{run.pk}",
    }
    if with_tuning:
        payload["tuning"] = tuning_payload(tuning)
    return payload


class OptimizationStartRequestSerializer(StrictSerializer):
    actions = serializers.ListField(
        child=serializers.ChoiceField(choices=list(ACTIONS)),
        required=False,
        min_length=1,
        max_length=len(ACTIONS),
        help_text="Which actions to run (they always run in the order tune, reindex, vacuum, analyze); all by default.",
    )
    recall_target = JsonFloatField(
        required=False, help_text="recall@10 the tuned HNSW search must reach: above 0.5, at most 1.0 (0.98)."
    )


class SearchTuningSerializer(serializers.Serializer):
    tuned = serializers.BooleanField()
    ef_search = serializers.IntegerField(allow_null=True, help_text="null: the settings' default.")
    exact_max = serializers.IntegerField()
    recall_target = serializers.FloatField(allow_null=True)
    measured_recall = serializers.FloatField(allow_null=True)
    measured_at = serializers.DateTimeField(allow_null=True)
    source_run_id = serializers.IntegerField(allow_null=True)


class OptimizationRunSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    chatbot_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=OptimizationRun.Status.choices)
    percent = serializers.IntegerField()
    stage = serializers.CharField()
    actions = serializers.ListField(child=serializers.CharField())
    recall_target = serializers.FloatField()
    results = serializers.JSONField(help_text="Per action: what it measured before and after, and what it decided.")
    error = serializers.CharField()
    requested_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    status_url = serializers.CharField()
    tuning = SearchTuningSerializer(required=False, help_text="The chatbot's tuning now (single-run answers).")


class OptimizationOverviewSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    tuning = SearchTuningSerializer()
    runs = OptimizationRunSerializer(many=True, help_text="The last 20 runs, newest first.")


class OptimizationApi(TenantApi):
    scopes = {"get": "read", "post": "write"}
    parser_classes = [JSONParser]

    @extend_schema(operation_id="optimize_overview", responses={200: OptimizationOverviewSerializer},
                   tags=["optimize"])  # fmt: skip
    def get(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        return Response(
            {
                "chatbot_id": chatbot.pk,
                "tuning": tuning_payload(search_tuning_get(tenant=self.tenant, chatbot_id=chatbot.pk)),
                "runs": [
                    optimization_run_payload(run)
                    for run in optimization_runs(tenant=self.tenant, chatbot_id=chatbot.pk)
                ],
            }
        )

    @extend_schema(operation_id="optimize_start", request=OptimizationStartRequestSerializer,
                   responses={202: OptimizationRunSerializer}, tags=["optimize"])  # fmt: skip
    def post(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        params = OptimizationStartRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        who = f"api key {self.api_key.prefix}" if self.api_key is not None else str(request.user)
        run = optimization_start(tenant=self.tenant, chatbot=chatbot, requested_by=who, **params.validated_data)
        run.refresh_from_db()  # eager Celery (tests) may have run it already
        tuning = search_tuning_get(tenant=self.tenant, chatbot_id=chatbot.pk)
        return Response(optimization_run_payload(run, tuning, with_tuning=True), status=202)


class OptimizationRunApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="optimize_run", responses={200: OptimizationRunSerializer}, tags=["optimize"])
    def get(self, request, run_id: int):
        run = optimization_run_get(tenant=self.tenant, run_id=run_id, api_key=self.api_key)
        tuning = search_tuning_get(tenant=self.tenant, chatbot_id=run.chatbot_id)
        return Response(optimization_run_payload(run, tuning, with_tuning=True))
