from django.contrib import admin

from search.models import OptimizationRun, SearchFeedback, SearchLog, SearchTuning


class SearchFeedbackInline(admin.TabularInline):
    model = SearchFeedback
    extra = 0
    can_delete = False
    fields = ["helpful", "chunk", "comment", "api_key", "created_at"]
    readonly_fields = fields


@admin.register(SearchLog)
class SearchLogAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "query",
        "mode",
        "chatbot",
        "tenant",
        "result_count",
        "top_score",
        "took_ms",
        "cache_hit",
        "strategy",
        "source",
    ]
    list_filter = ["mode", "cache_hit", "source", "strategy", "embedding_space", "tenant"]
    search_fields = ["query", "effective_query", "query_id"]
    date_hierarchy = "created_at"
    list_select_related = ["chatbot", "tenant"]
    exclude = ["query_embedding"]
    readonly_fields = [f.name for f in SearchLog._meta.fields if f.name != "query_embedding"]
    inlines = [SearchFeedbackInline]

    def has_add_permission(self, request):
        return False


@admin.register(SearchFeedback)
class SearchFeedbackAdmin(admin.ModelAdmin):
    list_display = ["created_at", "search", "helpful", "chunk", "chatbot", "tenant"]
    list_filter = ["helpful", "tenant"]
    raw_id_fields = ["search", "chunk", "api_key"]
    list_select_related = ["search", "chatbot", "tenant"]

    def has_add_permission(self, request):
        return False


@admin.register(OptimizationRun)
class OptimizationRunAdmin(admin.ModelAdmin):
    list_display = ["created_at", "chatbot", "tenant", "status", "percent", "stage", "requested_by", "finished_at"]
    list_filter = ["status", "tenant"]
    date_hierarchy = "created_at"
    list_select_related = ["chatbot", "tenant"]
    readonly_fields = [f.name for f in OptimizationRun._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SearchTuning)
class SearchTuningAdmin(admin.ModelAdmin):
    list_display = ["chatbot", "tenant", "ef_search", "exact_max", "recall_target", "measured_recall", "measured_at"]
    list_filter = ["tenant"]
    list_select_related = ["chatbot", "tenant"]
    raw_id_fields = ["chatbot", "source_run"]
    readonly_fields = ["measured_recall", "measured_at", "source_run"]
