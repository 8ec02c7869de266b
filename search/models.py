import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

from tenants.scoping import TenantOwned


class SearchLog(TenantOwned):
    """One row per search, written by ``search.services.search_run``."""

    class Source(models.TextChoices):
        API = "api", "API"
        DASHBOARD = "dashboard", "Dashboard"

    query_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="search_logs")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.API)
    query = models.TextField()
    effective_query = models.TextField(blank=True)
    mode = models.CharField(max_length=12)
    filters = models.JSONField(default=dict, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    conversation_turns = models.PositiveIntegerField(default=0)
    result_count = models.PositiveIntegerField(default=0)
    result_chunk_ids = models.JSONField(default=list, blank=True)
    result_ranks = models.JSONField(
        default=list,
        blank=True,
        help_text="Hybrid: [vector rank, keyword rank] of each result (null: not in that list).",
    )
    top_score = models.FloatField(null=True, blank=True, help_text="Best cosine similarity (null for keyword-only).")
    took_ms = models.FloatField()
    cache_hit = models.BooleanField(default=False)
    embedding_space = models.CharField(max_length=200)
    variant = models.CharField(
        max_length=10, blank=True, default="", help_text="control or variant while an A/B test ran; empty otherwise."
    )
    strategy = models.CharField(max_length=20, blank=True, help_text="exact or hnsw (how vectors were searched).")
    # Kept only for knowledge gaps (zero-result and low-score queries), to group them by meaning.
    query_embedding = VectorField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["chatbot", "created_at"])]

    def __str__(self) -> str:
        return f"{self.query[:60]} ({self.mode})"


class SearchFeedback(TenantOwned):
    search = models.ForeignKey(SearchLog, on_delete=models.CASCADE, related_name="feedback")
    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="search_feedback")
    helpful = models.BooleanField()
    chunk = models.ForeignKey("knowledge.Chunk", null=True, blank=True, on_delete=models.SET_NULL)
    comment = models.TextField(blank=True)
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["chatbot", "created_at"])]


class SearchBlend(TenantOwned):
    """What a chatbot's feedback says about its hybrid search: helpful results the keyword list
    ranked above the vector list (keyword votes) and the other way round (vector votes). The
    keyword factor scales the keyword share of the automatic blend (search.services)."""

    PRIOR = 5  # votes each side starts with: a few votes move the factor a little
    LOW, HIGH = 0.2, 2.0

    chatbot = models.OneToOneField("tenants.Chatbot", on_delete=models.CASCADE, related_name="search_blend")
    keyword_votes = models.PositiveIntegerField(default=0)
    vector_votes = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    @property
    def keyword_factor(self) -> float:
        factor = (self.keyword_votes + self.PRIOR) / (self.vector_votes + self.PRIOR)
        return min(max(factor, self.LOW), self.HIGH)
