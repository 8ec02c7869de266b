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


class OptimizationRun(TenantOwned):
    """One run of a chatbot's search optimisation (``search.services.optimize``): its actions in
    order (tune, reindex, vacuum, analyze), what each measured before and after, as a job state
    machine (queued -> running -> succeeded | failed, claimed with a conditional UPDATE)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="optimization_runs")
    actions = models.JSONField(default=list, help_text="The actions in the order they run.")
    recall_target = models.FloatField(default=0.98)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    percent = models.PositiveSmallIntegerField(default=0, help_text="Percent done, 0-100.")
    stage = models.CharField(max_length=200, blank=True, help_text="What it is doing now, in words.")
    error = models.TextField(blank=True)
    results = models.JSONField(default=dict, blank=True, help_text="Per action: what it measured and decided.")
    attempts = models.PositiveIntegerField(default=0)
    requested_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress written while running.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chatbot"],
                condition=models.Q(status__in=["queued", "running"]),
                name="optimizationrun_one_live",
            ),
        ]
        indexes = [models.Index(fields=["chatbot", "created_at"])]

    def __str__(self) -> str:
        return f"optimization {self.pk} of chatbot {self.chatbot_id} ({self.status})"


class SearchTuning(TenantOwned):
    """A chatbot's measured search settings (the index autopilot, ``tune``): the HNSW walk width
    that meets its recall target and the candidate count up to which it is searched exactly.
    Read with the chatbot's serving space (``search.services.serving``)."""

    chatbot = models.OneToOneField("tenants.Chatbot", on_delete=models.CASCADE, related_name="search_tuning")
    ef_search = models.PositiveIntegerField(help_text="hnsw.ef_search of this chatbot's HNSW searches.")
    exact_max = models.PositiveIntegerField(help_text="Candidate sets up to this size are searched exactly.")
    recall_target = models.FloatField()
    measured_recall = models.FloatField(null=True, blank=True, help_text="recall@10 at ef_search when measured.")
    measured_at = models.DateTimeField(default=timezone.now)
    source_run = models.ForeignKey(OptimizationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    def __str__(self) -> str:
        return f"chatbot {self.chatbot_id}: ef_search {self.ef_search}, exact up to {self.exact_max}"
