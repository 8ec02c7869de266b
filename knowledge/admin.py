from django.contrib import admin, messages
from django.utils.html import format_html

from knowledge.models import (
    ChatbotSpace,
    Chunk,
    ChunkEmbedding,
    Conversation,
    ConversationTurn,
    Document,
    EmbeddingSpace,
    IngestionJob,
    QAPair,
)
from knowledge.services import document_delete, document_reprocess
from tenants.errors import DomainError
from tenants.scoping import tenant_context


@admin.register(EmbeddingSpace)
class EmbeddingSpaceAdmin(admin.ModelAdmin):
    list_display = ["__str__", "provider", "model_name", "version", "dimensions", "tenant", "created_at"]
    list_filter = ["provider"]


@admin.register(ChatbotSpace)
class ChatbotSpaceAdmin(admin.ModelAdmin):
    list_display = ["chatbot", "space", "role", "tenant", "created_at"]
    list_filter = ["role", "space"]


class IngestionJobInline(admin.TabularInline):
    model = IngestionJob
    extra = 0
    can_delete = False
    fields = [
        "status",
        "stage",
        "progress",
        "chunks_done",
        "chunks_total",
        "attempts",
        "interruptions",
        "error",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "tenant",
        "chatbot",
        "content_type",
        "status_badge",
        "chunk_count",
        "detected_type",
        "language",
        "size_bytes",
        "created_at",
    ]
    list_filter = ["status", "content_type", "detected_type", "language", "tenant"]
    search_fields = ["title", "original_filename", "category", "error", "content_hash"]
    readonly_fields = [
        "content_hash",
        "size_bytes",
        "detected_type",
        "status",
        "error",
        "quality",
        "language",
        "page_count",
        "chunk_count",
        "created_at",
        "updated_at",
        "processed_at",
        "replaces",
    ]
    inlines = [IngestionJobInline]
    actions = ["reprocess", "delete_with_chunks"]
    date_hierarchy = "created_at"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        colour = {"ready": "#12805c", "failed": "#c4320a"}.get(obj.status, "#3457d5")
        return format_html('<b style="color:{}">{}</b>', colour, obj.status)

    # Actions call the services in each document's own tenant scope, as that tenant's request would.
    @admin.action(description="Reprocess selected documents")
    def reprocess(self, request, queryset):
        done = 0
        for document in list(queryset.select_related("tenant")):
            try:
                with tenant_context(document.tenant):
                    document_reprocess(tenant=document.tenant, document=document)
                done += 1
            except DomainError as exc:
                self.message_user(request, f"{document.title}: {exc.message}", messages.WARNING)
        self.message_user(request, f"Queued {done} documents for reprocessing.", messages.SUCCESS)

    @admin.action(description="Delete selected documents with their chunks and vectors")
    def delete_with_chunks(self, request, queryset):
        documents = list(queryset.select_related("tenant"))
        for document in documents:
            with tenant_context(document.tenant):
                document_delete(tenant=document.tenant, document=document)
        self.message_user(request, f"Deleted {len(documents)} documents.", messages.SUCCESS)


@admin.register(IngestionJob)
class IngestionJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "document",
        "tenant",
        "status",
        "stage",
        "progress",
        "chunks_done",
        "chunks_total",
        "attempts",
        "interruptions",
        "heartbeat_at",
        "created_at",
    ]
    list_filter = ["status", "stage", "tenant"]
    search_fields = ["document__title", "error"]
    readonly_fields = [f.name for f in IngestionJob._meta.fields]


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "document",
        "position",
        "token_count",
        "kind",
        "page",
        "short_text",
        "duplicate_of",
        "near_duplicate_of",
    ]
    list_filter = ["kind", "tenant", "chatbot"]
    search_fields = ["text", "document__title"]
    readonly_fields = ["search_vector"]
    raw_id_fields = ["document", "duplicate_of", "near_duplicate_of", "chatbot"]

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text[:120]


@admin.register(ChunkEmbedding)
class ChunkEmbeddingAdmin(admin.ModelAdmin):
    list_display = ["id", "chunk", "space", "chatbot", "created_at"]
    list_filter = ["space"]
    raw_id_fields = ["chunk", "chatbot"]
    exclude = ["embedding"]


class TurnInline(admin.TabularInline):
    model = ConversationTurn
    extra = 0
    fields = ["position", "role", "speaker", "content"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "document", "chatbot", "position", "external_id", "turn_count"]
    list_filter = ["tenant", "chatbot"]
    search_fields = ["external_id", "document__title"]
    inlines = [TurnInline]


@admin.register(QAPair)
class QAPairAdmin(admin.ModelAdmin):
    list_display = ["id", "chatbot", "conversation", "question_turn", "short_question"]
    list_filter = ["tenant", "chatbot"]
    search_fields = ["question", "answer"]

    @admin.display(description="question")
    def short_question(self, obj):
        return obj.question[:120]
