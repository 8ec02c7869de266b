from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.response import Response

from tenants.apis import TenantApi
from tenants.serializers import JsonBooleanField, JsonObjectField, StrictSerializer, UploadFileField, id_field
from training.models import ModelVersion, TrainingJob
from training.selectors import model_version_get, model_versions, training_job_get, training_jobs
from training.services import (
    model_rollback,
    model_version_deploy,
    training_data_summary,
    training_job_cancel,
    training_job_start,
    training_pairs_upload,
)
from training.services.jobs import STAGE_ORDER

MAX_PAIRS_FILE = 50 * 1024 * 1024


def job_payload(job: TrainingJob) -> dict:
    return {
        "job_id": job.pk,
        "chatbot_id": job.chatbot_id,
        "job_type": job.job_type,
        "status": job.status,
        "stage": job.stage,
        "percent": job.progress,
        "step": job.step,
        "total_steps": job.total_steps,
        "epoch": job.epoch,
        "loss": job.loss,
        "stage_seconds": {name: job.stage_seconds[name] for name in STAGE_ORDER if name in job.stage_seconds},
        "eta_seconds": job.eta_seconds,
        "config": job.config,
        "data_summary": job.data_summary,
        "metrics": job.metrics,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "status_url": f"/api/training/status/{job.pk}",
        "version_id": next((v.pk for v in job.versions.all()), None),
    }


def version_payload(version: ModelVersion) -> dict:
    return {
        "version_id": version.pk,
        "number": version.number,
        "status": version.status,
        "embedding_space": version.space.key,
        "kind": version.kind,
        "vectors_of": version.space.store.key,
        "job_id": version.job_id,
        "metrics": version.metrics,
        "gate": version.gate,
        "data_summary": version.data_summary,
        "size_bytes": version.size_bytes,
        "deploy_progress": version.deploy_progress,
        "error": version.error,
        "created_at": version.created_at,
        "deployed_at": version.deployed_at,
    }


class TrainingJobSerializer(serializers.Serializer):
    job_id = serializers.IntegerField()
    chatbot_id = serializers.IntegerField()
    job_type = serializers.CharField()
    status = serializers.ChoiceField(choices=TrainingJob.Status.choices)
    stage = serializers.ChoiceField(choices=TrainingJob.Stage.choices)
    percent = serializers.IntegerField()
    step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    epoch = serializers.FloatField()
    loss = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()), help_text="[[step, loss]]"
    )
    stage_seconds = serializers.DictField(
        child=serializers.FloatField(),
        help_text="Seconds each finished stage took: collect, mine, train, evaluate, save, and deploy once "
        "the version serves.",
    )
    eta_seconds = serializers.IntegerField(allow_null=True)
    config = serializers.JSONField()
    data_summary = serializers.JSONField()
    metrics = serializers.JSONField(help_text="At the end: candidate and active version on the held-out split.")
    error = serializers.CharField()
    cancel_requested = serializers.BooleanField()
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    status_url = serializers.CharField()
    version_id = serializers.IntegerField(allow_null=True)


class ModelVersionSerializer(serializers.Serializer):
    version_id = serializers.IntegerField()
    number = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ModelVersion.Status.choices)
    embedding_space = serializers.CharField()
    kind = serializers.ChoiceField(
        choices=["fine_tuned", "query_encoder", "adapter"],
        help_text="fine_tuned: own weights, deploy re-embeds every chunk; query_encoder: a tuned query "
        "encoder over vectors_of's stored vectors; adapter: a query transform over them (both deploy "
        "without re-embedding anything).",
    )
    vectors_of = serializers.CharField(help_text="The space whose stored vectors this version searches.")
    job_id = serializers.IntegerField(allow_null=True)
    metrics = serializers.JSONField()
    gate = serializers.JSONField()
    data_summary = serializers.JSONField()
    size_bytes = serializers.IntegerField()
    deploy_progress = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    deployed_at = serializers.DateTimeField(allow_null=True)


class TrainingStartRequestSerializer(StrictSerializer):
    chatbot_id = id_field(json=True)
    job_type = serializers.ChoiceField(
        choices=TrainingJob.Type.choices,
        required=False,
        help_text="Default: query_encoder for a local model (the query side tuned over the stored vectors: "
        "fastest, deploys without re-embedding), adapter for a hosted one.",
    )
    config = JsonObjectField(
        required=False,
        allow_null=True,
        help_text="batch_size (2-512), num_epochs (0.1-50), learning_rate (up to 0.1), warmup_ratio (0-0.5), "
        "max_pairs, hard_negatives, sources, auto_deploy, seed; adapter jobs also adapter_rank (1-256). "
        "Defaults: batch 32, 2 epochs, lr 2e-4 (query_encoder); batch 16, 1 epoch, lr 2e-5 (fine-tune); "
        "batch 64, 10 epochs, lr 1e-3, rank 32 (adapter).",
    )


class TrainingStartApi(TenantApi):
    scopes = {"post": "write"}
    parser_classes = [JSONParser]

    @extend_schema(operation_id="training_start", request=TrainingStartRequestSerializer,
                   responses={202: TrainingJobSerializer}, tags=["training"])  # fmt: skip
    def post(self, request):
        params = TrainingStartRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        job = training_job_start(
            tenant=self.tenant,
            chatbot=self.get_chatbot(data["chatbot_id"]),
            job_type=data.get("job_type"),
            config=request.data.get("config"),  # validated field by field by the service
            requested_by=str(self.api_key or request.user),
        )
        return Response(job_payload(job), status=202)


class TrainingStatusApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="training_status", responses={200: TrainingJobSerializer}, tags=["training"])
    def get(self, request, job_id: int):
        job = training_job_get(tenant=self.tenant, job_id=job_id, api_key=self.api_key)
        return Response(job_payload(job))


class TrainingJobListApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="training_jobs", responses={200: TrainingJobSerializer(many=True)}, tags=["training"])
    def get(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        return Response([job_payload(j) for j in training_jobs(tenant=self.tenant, chatbot=chatbot)])


class TrainingJobCancelApi(TenantApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="training_cancel", request=None, responses={200: TrainingJobSerializer},
                   tags=["training"])  # fmt: skip
    def post(self, request, job_id: int):
        job = training_job_get(tenant=self.tenant, job_id=job_id, api_key=self.api_key)
        return Response(job_payload(training_job_cancel(tenant=self.tenant, job=job)))


class TrainingPairsUploadRequestSerializer(StrictSerializer):
    chatbot_id = id_field()
    file = UploadFileField(help_text="JSONL or CSV: query plus chunk_id, or query plus positive; optional negative.")


class TrainingPairsUploadResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.DictField(), help_text="[{row, reason}], at most 100.")
    data_summary = serializers.JSONField()


class TrainingPairsUploadApi(TenantApi):
    scopes = {"post": "write"}
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="training_pairs_upload",
        request={"multipart/form-data": TrainingPairsUploadRequestSerializer},
        responses={202: TrainingPairsUploadResponseSerializer},
        tags=["training"],
    )
    def post(self, request):
        params = TrainingPairsUploadRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        chatbot = self.get_chatbot(params.validated_data["chatbot_id"])
        upload = params.validated_data["file"]
        if upload.size > MAX_PAIRS_FILE:
            from tenants.errors import UploadTooLarge

            raise UploadTooLarge(f"A pairs file may be at most {MAX_PAIRS_FILE // 2**20} MB.", field="file")
        report = training_pairs_upload(chatbot=chatbot, data=upload.read(), filename=upload.name or "")
        body = {
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "rejected": report.rejected,
            "errors": report.errors,
            "data_summary": training_data_summary(chatbot=chatbot),
        }
        return Response(body, status=202)


def model_history(*, tenant, chatbot) -> list[dict]:
    """The chatbot's timeline, oldest first: each version's offline numbers (nDCG@10 of it and of
    the version it was judged against, on the same held-out questions) and its live results (the
    A/B tests it was the variant of)."""
    from training.apis.abtests import ab_test_payload
    from training.selectors import ab_tests

    tests: dict[int, list] = {}
    for test in ab_tests(tenant=tenant, chatbot=chatbot, limit=200):
        report = ab_test_payload(test)["report"]
        arms = report.get("arms", {})
        tests.setdefault(test.variant_id, []).append(
            {
                "test_id": test.pk,
                "status": test.status,
                "traffic_percent": test.traffic_percent,
                "started_at": test.started_at,
                "ended_at": test.ended_at,
                "searches": report.get("searches", 0),
                "helpful_rate": {arm: arms.get(arm, {}).get("helpful_rate") for arm in ("control", "variant")},
                "difference": report.get("difference"),
                "p_value": report.get("p_value"),
                "verdict": report.get("verdict", test.reason),
            }
        )
    timeline = []
    for version in sorted(model_versions(tenant=tenant, chatbot=chatbot), key=lambda v: v.number):
        metrics = version.metrics or {}
        timeline.append(
            {
                "version_id": version.pk,
                "number": version.number,
                "kind": version.kind,
                "status": version.status,
                "created_at": version.created_at,
                "deployed_at": version.deployed_at,
                "ndcg_10": metrics.get("candidate", {}).get("ndcg_10"),
                "judged_against": metrics.get("active_space"),
                "against_ndcg_10": metrics.get("active", {}).get("ndcg_10"),
                "heldout_questions": metrics.get("candidate", {}).get("queries"),
                "comparable": metrics.get("comparable"),
                "gate": {"passed": bool(version.gate.get("passed")), "reason": version.gate.get("reason", "")},
                "ab_tests": tests.get(version.pk, []),
            }
        )
    return timeline


class ModelVersionListResponseSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    serving = serializers.CharField()
    versions = ModelVersionSerializer(many=True)
    data_summary = serializers.JSONField()
    history = serializers.JSONField(
        help_text="Oldest first: per version its offline nDCG@10 (and the version it was judged against, with "
        "comparable: the same questions as the previous version vs the new ones) and its A/B tests' live results."
    )


class ModelVersionListApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="models_list", responses={200: ModelVersionListResponseSerializer}, tags=["models"])
    def get(self, request, chatbot_id: int):
        from search.services import serving_for

        chatbot = self.get_chatbot(chatbot_id)
        body = {
            "chatbot_id": chatbot.pk,
            "serving": serving_for(chatbot).space.key,
            "versions": [version_payload(v) for v in model_versions(tenant=self.tenant, chatbot=chatbot)],
            "data_summary": training_data_summary(chatbot=chatbot),
            "history": model_history(tenant=self.tenant, chatbot=chatbot),
        }
        return Response(body)


class ModelDeployRequestSerializer(StrictSerializer):
    force = JsonBooleanField(required=False, default=False, help_text="Deploy a version the gate refused (audited).")


class ModelDeployApi(TenantApi):
    scopes = {"post": "write"}
    parser_classes = [JSONParser]

    @extend_schema(operation_id="models_deploy", request=ModelDeployRequestSerializer,
                   responses={202: ModelVersionSerializer}, tags=["models"])  # fmt: skip
    def post(self, request, version_id: int):
        params = ModelDeployRequestSerializer(data=request.data or {})
        params.is_valid(raise_exception=True)
        version = model_version_get(tenant=self.tenant, version_id=version_id, api_key=self.api_key)
        version = model_version_deploy(tenant=self.tenant, version=version, force=params.validated_data["force"])
        return Response(version_payload(version), status=202)


class ModelRollbackResponseSerializer(serializers.Serializer):
    active = serializers.IntegerField(allow_null=True, help_text="The version now serving; null: the base model.")
    space = serializers.CharField()


class ModelRollbackApi(TenantApi):
    scopes = {"post": "write"}

    @extend_schema(operation_id="models_rollback", request=None, responses={200: ModelRollbackResponseSerializer},
                   tags=["models"])  # fmt: skip
    def post(self, request, chatbot_id: int):
        chatbot = self.get_chatbot(chatbot_id)
        return Response(model_rollback(tenant=self.tenant, chatbot=chatbot))
