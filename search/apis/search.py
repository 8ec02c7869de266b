from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from knowledge.models import Document
from search import limits
from search.arguments import search_arguments_parse
from search.logbuffer import search_logs_flush
from search.presenters import search_payload
from search.selectors import (
    SEARCH_LOG_EXPORT_COLUMNS,
    knowledge_gaps,
    search_analytics,
    search_log_export_rows,
)
from search.services import search_answer, search_feedback_create
from tenants.apis import TenantApi
from tenants.scoping import scope_kept
from tenants.serializers import (
    JsonBooleanField,
    JsonFloatField,
    JsonIntegerField,
    JsonObjectField,
    StrictSerializer,
    TextField,
    id_field,
    query_params,
)
from tenants.spreadsheet import csv_rows


@extend_schema_field({"anyOf": [{"$ref": "#/components/schemas/MetadataFilter"}, {"type": "null"}]})
class MetadataFilterField(JsonObjectField):
    """The metadata filter language (search/filters.py), described exactly in the schema."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not value:
            raise serializers.ValidationError("must name at least one condition (or be left out, or null).")
        return value


def _content_types_field(**kwargs):
    return serializers.ListField(
        child=serializers.ChoiceField(choices=Document.ContentType.choices),
        required=False,
        allow_null=True,
        max_length=limits.LIST_MAX_ITEMS["content_types"],
        **kwargs,
    )


def _categories_field():
    return serializers.ListField(
        child=TextField(max_length=limits.CATEGORY_MAX_CHARS),
        required=False,
        allow_null=True,
        max_length=limits.LIST_MAX_ITEMS["categories"],
    )


def _document_ids_field():
    return serializers.ListField(
        child=id_field(json=True), required=False, allow_null=True, max_length=limits.LIST_MAX_ITEMS["document_ids"]
    )


class SearchFiltersSerializer(StrictSerializer):
    """The schema of ``filters`` (``search/arguments.py`` parses it; the numbers are ``search/limits.py``'s)."""

    content_types = _content_types_field()
    categories = _categories_field()
    document_ids = _document_ids_field()
    metadata = MetadataFilterField(
        required=False,
        allow_null=True,
        help_text='{"field": "product", "op": "eq", "value": "web"}, {"and": [...]}, {"or": [...]}, or the '
        'shorthand {"product": "web", "year": {"gte": 2020}}. Operators: eq, ne, in, nin, gt, gte, lt, lte.',
    )


class ConversationTurnSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = TextField(max_length=limits.TURN_MAX_CHARS, allow_blank=True, trim_whitespace=False)


class SearchRequestSerializer(StrictSerializer):
    """The OpenAPI schema of ``POST /api/search``. Requests are parsed by
    ``search_arguments_parse`` (one parser for every path); both read ``search/limits.py``."""

    query = TextField(max_length=limits.QUERY_MAX_CHARS, trim_whitespace=True)
    chatbot_id = id_field(json=True)
    max_results = JsonIntegerField(
        min_value=limits.MAX_RESULTS[0], max_value=limits.MAX_RESULTS[1], default=limits.DEFAULT_MAX_RESULTS
    )
    similarity_threshold = JsonFloatField(
        min_value=limits.THRESHOLD[0], max_value=limits.THRESHOLD[1], default=limits.DEFAULT_THRESHOLD
    )
    mode = serializers.ChoiceField(choices=limits.MODES, default=limits.DEFAULT_MODE)
    semantic_weight = JsonFloatField(
        min_value=limits.SEMANTIC_WEIGHT[0],
        max_value=limits.SEMANTIC_WEIGHT[1],
        required=False,
        allow_null=True,
        help_text="Hybrid only: 1 = vectors only, 0 = keywords only; omit to let each query choose.",
    )
    filters = SearchFiltersSerializer(required=False, allow_null=True)
    content_types = _content_types_field(help_text="Same as filters.content_types.")
    categories = _categories_field()
    document_ids = _document_ids_field()
    metadata = MetadataFilterField(required=False, allow_null=True, help_text="Same as filters.metadata.")
    conversation = serializers.ListField(
        child=ConversationTurnSerializer(),
        required=False,
        allow_null=True,
        max_length=limits.CONVERSATION_MAX_TURNS,
        help_text="Earlier turns, oldest first; the current message is `query`.",
    )
    user_id = TextField(
        max_length=limits.CALLER_ID_MAX_CHARS,
        required=False,
        allow_null=True,
        help_text="Your end user's id (any text): while an A/B test runs, one user always gets the same variant.",
    )
    conversation_id = TextField(
        max_length=limits.CALLER_ID_MAX_CHARS,
        required=False,
        allow_null=True,
        help_text="The conversation's id: the A/B variant's key when no user_id is given (else the query is).",
    )


class SearchHitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document_id = serializers.IntegerField()
    title = serializers.CharField()
    content = serializers.CharField()
    similarity_score = serializers.FloatField(
        allow_null=True,
        help_text="Cosine similarity (semantic, hybrid); text rank (keyword); null for a hybrid hit found only by "
        "keywords.",
    )
    content_type = serializers.CharField()
    category = serializers.CharField()
    metadata = serializers.JSONField()
    page = serializers.IntegerField(allow_null=True)
    heading = serializers.ListField(child=serializers.CharField())
    context = serializers.CharField(
        help_text="What the chunk is about, as it was embedded and matched: the FAQ question its text answers, "
        "or the document's title and headings. `content` is the chunk's own text, to quote."
    )
    fused_score = serializers.FloatField(required=False, help_text="Hybrid: weighted reciprocal-rank-fusion score.")
    semantic_rank = serializers.IntegerField(required=False, allow_null=True)
    keyword_rank = serializers.IntegerField(required=False, allow_null=True)


class SearchResponseSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    query_id = serializers.UUIDField(help_text="Send feedback to /api/search/{query_id}/feedback.")
    took_ms = serializers.FloatField()
    embedding_space = serializers.CharField()
    mode = serializers.CharField()
    effective_query = serializers.CharField(help_text="The query actually matched (with conversation context).")
    cached = serializers.BooleanField()
    semantic_weight = serializers.FloatField(allow_null=True, help_text="Hybrid: the weight used.")
    variant = serializers.CharField(
        allow_null=True, help_text="While an A/B test of model versions runs: control or variant; else null."
    )


class SearchApi(TenantApi):
    """The DRF adapter of ``POST /api/search`` (the fast path answers most requests before Django;
    this view answers the rest, and every error, in full). The pipeline counts the key's rate
    limit itself, so DRF's throttle is off here."""

    scopes = {"post": "search"}
    parser_classes = [JSONParser]
    throttle_classes = []

    @extend_schema(
        operation_id="search",
        request=SearchRequestSerializer,
        responses={200: SearchResponseSerializer},
        tags=["search"],
    )
    def post(self, request):
        args = search_arguments_parse(request.data)  # the fast path's parser too (search/arguments.py)
        return Response(search_payload(search_answer(principal=self.principal, args=args)))


class HybridSearchQuerySerializer(serializers.Serializer):
    q = TextField(max_length=limits.QUERY_MAX_CHARS, help_text="The question.")
    max_results = serializers.IntegerField(
        min_value=limits.MAX_RESULTS[0], max_value=limits.MAX_RESULTS[1], default=limits.DEFAULT_MAX_RESULTS
    )
    semantic_weight = serializers.FloatField(
        min_value=limits.SEMANTIC_WEIGHT[0],
        max_value=limits.SEMANTIC_WEIGHT[1],
        required=False,
        help_text="0–1: weight of the vector list in the fusion (1 - weight for keywords); omit to let each query "
        "choose.",
    )


class SearchHybridApi(TenantApi):
    """``GET /api/search/hybrid/{chatbot_id}?q=…``: its query string becomes the search body, parsed
    by the one parser, answered by the one pipeline."""

    scopes = {"get": "search"}
    throttle_classes = []

    @extend_schema(
        operation_id="search_hybrid",
        parameters=[HybridSearchQuerySerializer],
        responses={200: SearchResponseSerializer},
        tags=["search"],
    )
    def get(self, request, chatbot_id: int):
        params = HybridSearchQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        data = params.validated_data
        body = {"query": data["q"], "chatbot_id": chatbot_id, "max_results": data["max_results"], "mode": "hybrid"}
        if data.get("semantic_weight") is not None:
            body["semantic_weight"] = data["semantic_weight"]
        args = search_arguments_parse(body)
        return Response(search_payload(search_answer(principal=self.principal, args=args)))


class SearchFeedbackRequestSerializer(StrictSerializer):
    helpful = JsonBooleanField()
    chunk_id = id_field(json=True, required=False, allow_null=True)
    comment = TextField(required=False, allow_blank=True, max_length=2000)


class SearchFeedbackResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    query_id = serializers.UUIDField()
    helpful = serializers.BooleanField()
    chunk_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class SearchFeedbackCreateApi(TenantApi):
    scopes = {"post": "search"}
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="search_feedback",
        request=SearchFeedbackRequestSerializer,
        responses={201: SearchFeedbackResponseSerializer},
        tags=["search"],
    )
    def post(self, request, query_id):
        params = SearchFeedbackRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        feedback = search_feedback_create(
            tenant=self.tenant, query_id=query_id, api_key=self.api_key, **params.validated_data
        )
        body = {
            "id": feedback.pk,
            "query_id": query_id,
            "helpful": feedback.helpful,
            "chunk_id": feedback.chunk_id,
            "created_at": feedback.created_at,
        }
        return Response(SearchFeedbackResponseSerializer(body).data, status=201)


class SearchAnalyticsQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=365, default=7, help_text="The last 1–365 days.")


class TopQuerySerializer(serializers.Serializer):
    query = serializers.CharField()
    count = serializers.IntegerField()
    mean_top_score = serializers.FloatField(allow_null=True)
    mean_results = serializers.FloatField(allow_null=True)
    last_seen = serializers.DateTimeField()


class DailySearchSerializer(serializers.Serializer):
    date = serializers.DateField()
    searches = serializers.IntegerField()
    p50_ms = serializers.FloatField(allow_null=True)
    p95_ms = serializers.FloatField(allow_null=True)
    zero_result_rate = serializers.FloatField(allow_null=True)
    cache_hit_rate = serializers.FloatField(allow_null=True)
    gaps = serializers.IntegerField()


class KnowledgeGapSerializer(serializers.Serializer):
    query = serializers.CharField(help_text="The most frequent wording in the group.")
    examples = serializers.ListField(child=serializers.CharField())
    count = serializers.IntegerField()
    zero_results = serializers.IntegerField()
    best_score = serializers.FloatField(allow_null=True)
    last_seen = serializers.DateTimeField()


class LatencySerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class FeedbackSummarySerializer(serializers.Serializer):
    count = serializers.IntegerField()
    helpful = serializers.IntegerField()
    not_helpful = serializers.IntegerField()
    helpful_rate = serializers.FloatField(allow_null=True)
    feedback_rate = serializers.FloatField(allow_null=True, help_text="Share of searches that got feedback.")


class HybridBlendSerializer(serializers.Serializer):
    keyword_votes = serializers.IntegerField(
        help_text="Helpful hybrid results the keyword list ranked above the vector list, and unhelpful ones "
        "it ranked below (all of the chatbot's feedback)."
    )
    vector_votes = serializers.IntegerField(help_text="The same for the vector list.")
    keyword_factor = serializers.FloatField(
        help_text="How much the automatic hybrid blend scales its keyword share for this chatbot (0.2-2.0; 1 with "
        "no feedback)."
    )


class SearchAnalyticsResponseSerializer(serializers.Serializer):
    chatbot_id = serializers.IntegerField()
    days = serializers.IntegerField()
    searches = serializers.IntegerField()
    latency_ms = LatencySerializer()
    cache_hit_rate = serializers.FloatField(allow_null=True)
    zero_result_queries = serializers.IntegerField()
    zero_result_rate = serializers.FloatField(allow_null=True)
    low_score_queries = serializers.IntegerField()
    low_score_threshold = serializers.FloatField()
    mean_top_score = serializers.FloatField(allow_null=True)
    top_queries = TopQuerySerializer(many=True)
    feedback = FeedbackSummarySerializer()
    hybrid_blend = HybridBlendSerializer()
    daily = DailySearchSerializer(many=True)
    knowledge_gaps = KnowledgeGapSerializer(many=True)


class SearchAnalyticsApi(TenantApi):
    scopes = {"get": "read"}

    @extend_schema(
        operation_id="search_analytics",
        parameters=[SearchAnalyticsQuerySerializer],
        responses={200: SearchAnalyticsResponseSerializer},
        tags=["search"],
    )
    def get(self, request, chatbot_id: int):
        params = SearchAnalyticsQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        days = params.validated_data["days"]
        chatbot = self.get_chatbot(chatbot_id)
        search_logs_flush()  # include searches still queued for writing
        low = settings.SEARCH_LOW_SCORE
        body = search_analytics(tenant=self.tenant, chatbot_id=chatbot.pk, days=days, low_score=low)
        body["knowledge_gaps"] = knowledge_gaps(tenant=self.tenant, chatbot_id=chatbot.pk, days=days, low_score=low)[
            :50
        ]
        return Response(SearchAnalyticsResponseSerializer(body).data)


class SearchLogExportApi(TenantApi):
    """The chatbot's search log as CSV (cells that a spreadsheet would run as formulas are
    neutralised)."""

    scopes = {"get": "read"}

    @extend_schema(
        operation_id="search_log_export",
        parameters=[SearchAnalyticsQuerySerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR},
        tags=["search"],
    )
    def get(self, request, chatbot_id: int):
        params = SearchAnalyticsQuerySerializer(data=query_params(request))
        params.is_valid(raise_exception=True)
        chatbot = self.get_chatbot(chatbot_id)
        return search_log_csv_response(tenant=self.tenant, chatbot=chatbot, days=params.validated_data["days"])


def search_log_csv_response(*, tenant, chatbot, days: int) -> StreamingHttpResponse:
    search_logs_flush()  # include searches still queued for writing
    rows = search_log_export_rows(tenant=tenant, chatbot_id=chatbot.pk, days=days)
    # The body streams after the request's tenant scope has ended: each step re-enters it.
    body = scope_kept(csv_rows(SEARCH_LOG_EXPORT_COLUMNS, rows))
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="searches-chatbot-{chatbot.pk}-{days}d.csv"'
    return response
