from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from search.services import MAX_QUERY_CHARS, MODES, search_run
from tenants.apis import TenantApi


class SearchRequestSerializer(serializers.Serializer):
    query = serializers.CharField(max_length=MAX_QUERY_CHARS, trim_whitespace=True)
    chatbot_id = serializers.IntegerField()
    max_results = serializers.IntegerField(min_value=1, max_value=50, default=5)
    similarity_threshold = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)
    mode = serializers.ChoiceField(choices=MODES, default="semantic")


class SearchHitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document_id = serializers.IntegerField()
    title = serializers.CharField()
    content = serializers.CharField()
    similarity_score = serializers.FloatField(
        allow_null=True,
        help_text="Cosine similarity (semantic); ts_rank_cd (keyword); null for keyword-only hybrid hits.",
    )
    content_type = serializers.CharField()
    category = serializers.CharField()
    metadata = serializers.JSONField()
    page = serializers.IntegerField(allow_null=True)
    heading = serializers.ListField(child=serializers.CharField())
    fused_score = serializers.FloatField(required=False, help_text="Hybrid: reciprocal-rank-fusion score.")
    semantic_rank = serializers.IntegerField(required=False, allow_null=True)
    keyword_rank = serializers.IntegerField(required=False, allow_null=True)


class SearchResponseSerializer(serializers.Serializer):
    results = SearchHitSerializer(many=True)
    took_ms = serializers.FloatField()
    embedding_space = serializers.CharField()
    mode = serializers.CharField()


def hit_payload(hit, mode: str) -> dict:
    body = {
        "chunk_id": hit.chunk_id,
        "document_id": hit.document_id,
        "title": hit.title,
        "content": hit.content,
        "similarity_score": hit.score,
        "content_type": hit.content_type,
        "category": hit.category,
        "metadata": hit.metadata,
        "page": hit.page,
        "heading": hit.heading,
    }
    if mode == "hybrid":
        body["similarity_score"] = hit.score if "semantic" in hit.ranks else None
        body["fused_score"] = hit.ranks["fused_score"]
        body["semantic_rank"] = hit.ranks.get("semantic")
        body["keyword_rank"] = hit.ranks.get("keyword")
    return body


class SearchApi(TenantApi):
    @extend_schema(
        operation_id="search",
        request=SearchRequestSerializer,
        responses={200: SearchResponseSerializer},
        tags=["search"],
    )
    def post(self, request):
        params = SearchRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        chatbot = self.get_chatbot(data.pop("chatbot_id"))
        result = search_run(tenant=self.tenant, chatbot=chatbot, **data)
        body = {
            "results": [hit_payload(h, result.mode) for h in result.results],
            "took_ms": result.took_ms,
            "embedding_space": result.embedding_space,
            "mode": result.mode,
        }
        return Response(SearchResponseSerializer(body).data)
