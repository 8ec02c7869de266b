from __future__ import annotations

from django.core.paginator import Paginator
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from knowledge.models import Document, IngestionJob
from knowledge.selectors import chunk_list, document_get, document_latest_job, document_list, document_totals
from knowledge.services import document_create, document_delete, document_reprocess
from tenants.apis import TenantApi
from tenants.serializers import (
    FormBooleanField,
    JsonObjectField,
    StrictSerializer,
    TextField,
    UploadFileField,
    id_field,
    query_params,
)


class UploadTrainingDataRequestSerializer(StrictSerializer):
    file = UploadFileField(help_text="PDF, DOCX, CSV, JSON/JSONL, TXT/Markdown or a chat log (not empty).")
    chatbot_id = id_field()
    content_type = serializers.ChoiceField(choices=Document.ContentType.values, default=Document.ContentType.DOCUMENT)
    title = TextField(required=False, allow_blank=True, max_length=300, default="")
    category = TextField(required=False, allow_blank=True, max_length=200, default="")
    user_id = TextField(required=False, allow_blank=True, max_length=200, default="")
    metadata = JsonObjectField(required=False, default=dict, help_text="A JSON object (in the form, as JSON text).")
    replace = FormBooleanField(
        required=False,
        default=False,
        help_text="Replace the chatbot's document with the same title once this one is ready.",
    )


class UploadTrainingDataResponseSerializer(serializers.Serializer):
    document_id = serializers.IntegerField()
    job_id = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=Document.Status.values)
    status_url = serializers.CharField()
    duplicate = serializers.BooleanField(
        help_text="True when identical content was already uploaded; nothing new was stored."
    )


class DocumentOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    chatbot_id = serializers.IntegerField()
    title = serializers.CharField()
    content_type = serializers.CharField()
    category = serializers.CharField()
    metadata = serializers.JSONField()
    original_filename = serializers.CharField()
    size_bytes = serializers.IntegerField()
    detected_type = serializers.CharField()
    status = serializers.ChoiceField(choices=Document.Status.values)
    progress = serializers.IntegerField(help_text="Percent done, 0-100.")
    stage = serializers.CharField(allow_null=True)
    chunks_done = serializers.IntegerField()
    chunks_total = serializers.IntegerField()
    chunk_count = serializers.IntegerField()
    attempts = serializers.IntegerField()
    error = serializers.CharField(help_text="Why the document failed, for a person to read.")
    quality = serializers.JSONField()
    language = serializers.CharField()
    page_count = serializers.IntegerField(allow_null=True)
    replaces_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    processed_at = serializers.DateTimeField(allow_null=True)


def document_payload(document: Document, job: IngestionJob | None) -> dict:
    """Document fields plus the progress of its latest ingestion job."""
    stage = job.stage if job else None
    progress, done, total, attempts = (
        (job.progress, job.chunks_done, job.chunks_total, job.attempts) if job else (0,) * 4
    )
    if document.status == Document.Status.READY:
        progress = 100
    return {
        "id": document.pk,
        "chatbot_id": document.chatbot_id,
        "title": document.title,
        "content_type": document.content_type,
        "category": document.category,
        "metadata": document.metadata,
        "original_filename": document.original_filename,
        "size_bytes": document.size_bytes,
        "detected_type": document.detected_type,
        "status": document.status,
        "progress": progress,
        "stage": stage,
        "chunks_done": done,
        "chunks_total": total,
        "chunk_count": document.chunk_count,
        "attempts": attempts,
        "error": document.error,
        "quality": document.quality,
        "language": document.language,
        "page_count": document.page_count,
        "replaces_id": document.replaces_id,
        "created_at": document.created_at,
        "processed_at": document.processed_at,
    }


class UploadTrainingDataApi(TenantApi):
    parser_classes = [MultiPartParser]  # a file: multipart/form-data only
    scopes = {"post": "write"}

    @extend_schema(
        operation_id="upload_training_data",
        request=UploadTrainingDataRequestSerializer,
        responses={202: UploadTrainingDataResponseSerializer, 200: UploadTrainingDataResponseSerializer},
        tags=["training data"],
        description="Store a file and queue it for parsing, chunking and embedding. Returns 202 at once; "
        "poll `status_url`. Identical content already in the chatbot answers 200 with "
        "`duplicate: true`.",
    )
    def post(self, request):
        params = UploadTrainingDataRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        chatbot = self.get_chatbot(data["chatbot_id"])
        result = document_create(
            tenant=self.tenant,
            chatbot=chatbot,
            upload=data["file"],
            content_type=data["content_type"],
            title=data["title"],
            category=data["category"],
            metadata=data["metadata"],
            source_user_id=data["user_id"],
            replace=data["replace"],
        )
        body = {
            "document_id": result.document.pk,
            "job_id": result.job.pk if result.job else None,
            "status": result.document.status,
            "status_url": request.build_absolute_uri(reverse("api-document-status", args=[result.document.pk])),
            "duplicate": result.duplicate,
        }
        return Response(
            UploadTrainingDataResponseSerializer(body).data,
            status=status.HTTP_200_OK if result.duplicate else status.HTTP_202_ACCEPTED,
        )


class TrainingDataTotalsSerializer(serializers.Serializer):
    documents = serializers.IntegerField()
    chunks = serializers.IntegerField()
    bytes = serializers.IntegerField()
    queued = serializers.IntegerField()
    processing = serializers.IntegerField()
    ready = serializers.IntegerField()
    failed = serializers.IntegerField()


class TrainingDataListResponseSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    documents = DocumentOutputSerializer(many=True)
    totals = TrainingDataTotalsSerializer()


class TrainingDataListQuerySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Document.Status.values, required=False)


class TrainingDataListApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(
        operation_id="training_data_list",
        responses={200: TrainingDataListResponseSerializer},
        parameters=[TrainingDataListQuerySerializer],
        tags=["training data"],
    )
    def get(self, request, chatbot_id: int):
        params = TrainingDataListQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        status_filter = params.validated_data.get("status")
        chatbot = self.get_chatbot(chatbot_id)
        documents = document_list(tenant=self.tenant, chatbot=chatbot, status=status_filter)
        body = {
            "chatbot_id": chatbot.pk,
            "documents": [document_payload(d, d.latest_job) for d in documents],
            "totals": document_totals(tenant=self.tenant, chatbot=chatbot),
        }
        return Response(TrainingDataListResponseSerializer(body).data)


class ChunkOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    position = serializers.IntegerField()
    text = serializers.CharField()
    token_count = serializers.IntegerField()
    kind = serializers.CharField()
    page = serializers.IntegerField(allow_null=True)
    page_end = serializers.IntegerField(allow_null=True)
    heading_path = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    duplicate_of_id = serializers.IntegerField(allow_null=True)
    near_duplicate_of_id = serializers.IntegerField(allow_null=True)


class ChunkPageSerializer(serializers.Serializer):
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    total = serializers.IntegerField()
    pages = serializers.IntegerField()
    results = ChunkOutputSerializer(many=True)


class DocumentDetailResponseSerializer(DocumentOutputSerializer):
    chunks = ChunkPageSerializer()


class DocumentDetailQuerySerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1, help_text="Page of chunks.")
    page_size = serializers.IntegerField(min_value=1, max_value=500, default=50, help_text="Chunks per page.")


class DocumentDetailApi(TenantApi):
    scopes = {"get": "read", "delete": "write"}

    @extend_schema(
        operation_id="document_detail",
        responses={200: DocumentDetailResponseSerializer},
        parameters=[DocumentDetailQuerySerializer],
        tags=["training data"],
    )
    def get(self, request, document_id: int):
        params = DocumentDetailQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        document = document_get(tenant=self.tenant, document_id=document_id, api_key=self.api_key)
        page_size, page_number = params.validated_data["page_size"], params.validated_data["page"]
        paginator = Paginator(chunk_list(tenant=self.tenant, document=document), page_size)
        page = paginator.get_page(page_number)
        body = document_payload(document, document_latest_job(document=document))
        body["chunks"] = {
            "page": page.number,
            "page_size": page_size,
            "total": paginator.count,
            "pages": paginator.num_pages,
            "results": list(page.object_list),
        }
        return Response(DocumentDetailResponseSerializer(body).data)

    @extend_schema(operation_id="document_delete", responses={204: None}, tags=["training data"])
    def delete(self, request, document_id: int):
        document = document_get(tenant=self.tenant, document_id=document_id, api_key=self.api_key)
        document_delete(tenant=self.tenant, document=document)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentStatusApi(TenantApi):
    scopes = {"get": ("read", "write")}  # an uploading key may follow what it uploaded

    @extend_schema(operation_id="document_status", responses={200: DocumentOutputSerializer}, tags=["training data"])
    def get(self, request, document_id: int):
        document = document_get(tenant=self.tenant, document_id=document_id, api_key=self.api_key)
        return Response(
            DocumentOutputSerializer(document_payload(document, document_latest_job(document=document))).data
        )


class DocumentReprocessResponseSerializer(serializers.Serializer):
    document_id = serializers.IntegerField()
    job_id = serializers.IntegerField()
    status = serializers.CharField()
    status_url = serializers.CharField()


class DocumentReprocessApi(TenantApi):
    scopes = {"post": "write"}

    @extend_schema(
        operation_id="document_reprocess",
        request=None,
        responses={202: DocumentReprocessResponseSerializer},
        tags=["training data"],
    )
    def post(self, request, document_id: int):
        document = document_get(tenant=self.tenant, document_id=document_id, api_key=self.api_key)
        job = document_reprocess(tenant=self.tenant, document=document)
        body = {
            "document_id": document.pk,
            "job_id": job.pk,
            "status": job.status,
            "status_url": request.build_absolute_uri(reverse("api-document-status", args=[document.pk])),
        }
        return Response(DocumentReprocessResponseSerializer(body).data, status=status.HTTP_202_ACCEPTED)
