"""Training data, training jobs and model versions of a chatbot.

A chatbot's own embedding model is a ``ModelVersion``: a tenant-owned ``EmbeddingSpace`` whose
artifact holds fine-tuned weights, made by a ``TrainingJob`` from the chatbot's ``TrainingPair``
rows and judged on the held-out pairs before it may serve.
"""

from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwned


class TrainingPair(TenantOwned):
    """A query and the chunk (or text) that answers it, remembering where it came from. The
    held-out split is decided once per query (seeded by the chatbot and the query's normalised
    text) and stored, so every version of a chatbot is compared on the same questions."""

    class Source(models.TextChoices):
        FAQ = "faq", "FAQ rows"
        CHATLOG = "chatlog", "Chat-log Q&A pairs"
        FEEDBACK = "feedback", "Search feedback"
        UPLOAD = "upload", "Uploaded pairs"
        SYNTHETIC = "synthetic", "Synthetic (from chunks)"
        LLM = "llm", "LLM-written questions"

    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        HELDOUT = "heldout", "Held out"

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="training_pairs")
    query = models.TextField()
    query_key = models.CharField(max_length=64, help_text="Digest of the normalised query.")
    chunk = models.ForeignKey("knowledge.Chunk", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    positive_text = models.TextField(blank=True, help_text="The answer's text when it is not one of the chunks.")
    positive_key = models.CharField(max_length=80, help_text="chunk:<id> or text:<digest>; with query_key unique.")
    negative_chunk = models.ForeignKey(
        "knowledge.Chunk", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    negative_text = models.TextField(blank=True)
    source = models.CharField(max_length=12, choices=Source.choices)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chatbot", "query_key", "positive_key"], name="trainingpair_unique"),
        ]
        indexes = [models.Index(fields=["chatbot", "split", "source"])]


class TrainingJob(TenantOwned):
    class Type(models.TextChoices):
        INITIAL = "initial_training", "Initial training"
        INCREMENTAL = "incremental", "Incremental"
        ADAPTER = "adapter", "Query adapter"
        QUERY_ENCODER = "query_encoder", "Query encoder"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Stage(models.TextChoices):
        WAITING = "waiting", "Waiting for a worker"
        COLLECTING = "collecting", "Collecting pairs"
        MINING = "mining", "Mining hard negatives"
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"
        SAVING = "saving", "Saving"
        DONE = "done", "Done"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="training_jobs")
    job_type = models.CharField(max_length=20, choices=Type.choices, default=Type.INITIAL)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.WAITING)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent done, 0-100.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(default=0.0)
    loss = models.JSONField(default=list, blank=True, help_text="[[step, loss], ...] as training logged it.")
    stage_seconds = models.JSONField(
        default=dict, blank=True, help_text="Seconds each stage took: collect, mine, train, evaluate, save, deploy."
    )
    eta_seconds = models.PositiveIntegerField(null=True, blank=True)
    data_summary = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    lease_token = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chatbot"], condition=models.Q(status__in=["queued", "running"]), name="trainingjob_one_active"
            ),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]


class ModelVersion(TenantOwned):
    """A chatbot's model version: its own embedding space (weights under the artifacts
    directory), the job that made it, its evaluation and the gate's verdict."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        DEPLOYING = "deploying", "Deploying"
        TESTING = "testing", "In an A/B test"
        ACTIVE = "active", "Active"
        PREVIOUS = "previous", "Previous"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="model_versions")
    number = models.PositiveIntegerField()
    space = models.OneToOneField("knowledge.EmbeddingSpace", on_delete=models.PROTECT, related_name="model_version")
    job = models.ForeignKey(TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="versions")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CANDIDATE)
    metrics = models.JSONField(
        default=dict, blank=True, help_text="Candidate and active version on the held-out split."
    )
    gate = models.JSONField(default=dict, blank=True, help_text='{"passed": bool, "reason": str, ...}')
    data_summary = models.JSONField(default=dict, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    deploy_progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    deployed_at = models.DateTimeField(null=True, blank=True)

    @property
    def kind(self) -> str:
        """fine_tuned (own weights for documents and queries), query_encoder (own query weights over
        its store's vectors) or adapter (a query transform over its store's vectors)."""
        if "query_encoder" in (self.metrics or {}):
            return "query_encoder"
        return "adapter" if self.space.vectors_from_id else "fine_tuned"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chatbot", "number"], name="modelversion_unique_number")]


class ABTest(TenantOwned):
    """Live traffic between the chatbot's active version (control) and a variant: the variant's
    space is embedded first (``embedding``, with progress), then serves ``traffic_percent`` of the
    searches by sticky assignment (``search.services.serving``) until it is promoted, stopped, or
    ends by itself (``max_days``, or a guardrail). ``result`` keeps the comparison as it ended."""

    class Status(models.TextChoices):
        EMBEDDING = "embedding", "Embedding the variant"
        RUNNING = "running", "Running"
        PROMOTED = "promoted", "Promoted (the variant serves)"
        STOPPED = "stopped", "Stopped (control kept)"
        ENDED = "ended", "Ended at max days (control kept)"
        GUARDRAIL = "guardrail", "Stopped by a guardrail"
        FAILED = "failed", "Failed"

    LIVE = (Status.EMBEDDING, Status.RUNNING)

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="ab_tests")
    variant = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="ab_tests_as_variant")
    control = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ab_tests_as_control",
        help_text="Empty: the base model was active.",
    )
    control_space = models.CharField(max_length=200, help_text="The control's embedding space key.")
    traffic_percent = models.PositiveSmallIntegerField()
    min_searches = models.PositiveIntegerField(default=1000)
    max_days = models.PositiveSmallIntegerField(default=14)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.EMBEDDING)
    progress = models.PositiveSmallIntegerField(default=0)
    reason = models.TextField(blank=True, help_text="Why it ended (or failed).")
    result = models.JSONField(default=dict, blank=True, help_text="The comparison when it ended.")
    requested_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the variant began to serve.")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["chatbot"], condition=models.Q(status__in=["embedding", "running"]), name="abtest_one_live"
            ),
        ]


class ContinuousLearning(TenantOwned):
    """A chatbot's opt-in to learn by itself: a beat task starts a job when enough new training
    signal arrived since its last version (``training.services.continuous``); what passes the gate
    is deployed or A/B-tested as set here, what fails stays a candidate with its numbers."""

    chatbot = models.OneToOneField("tenants.Chatbot", on_delete=models.CASCADE, related_name="continuous_learning")
    enabled = models.BooleanField(default=False)
    job_type = models.CharField(
        max_length=20,
        choices=[
            (TrainingJob.Type.QUERY_ENCODER, "Query encoder"),
            (TrainingJob.Type.INCREMENTAL, "Incremental fine-tune"),
            (TrainingJob.Type.ADAPTER, "Query adapter"),
        ],
        default=TrainingJob.Type.QUERY_ENCODER,
        help_text="A hosted model always gets an adapter (it cannot be fine-tuned).",
    )
    min_new_pairs = models.PositiveIntegerField(default=50, help_text="New training pairs since the last version.")
    min_days_between = models.FloatField(default=7, help_text="Days between two runs at least.")
    auto_deploy = models.BooleanField(default=True, help_text="Deploy what passes the gate.")
    auto_ab_percent = models.PositiveSmallIntegerField(
        default=0, help_text="1-50: A/B-test what passes the gate at this share of traffic instead of deploying it."
    )
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job = models.ForeignKey(TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_outcome = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)


class Evaluation(TenantOwned):
    """A nightly measurement of the version serving a chatbot, on its held-out questions over its
    whole corpus: retrieval quality as a time series, watched like latency
    (``training.services.evaluation``)."""

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="evaluations")
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    space_key = models.CharField(max_length=200, help_text="The embedding space that was serving.")
    queries = models.PositiveIntegerField(default=0)
    ndcg_10 = models.FloatField(null=True, blank=True)
    mrr_10 = models.FloatField(null=True, blank=True)
    recall_10 = models.FloatField(null=True, blank=True)
    baseline_ndcg_10 = models.FloatField(
        null=True, blank=True, help_text="What the serving version measured when it was deployed (or first measured)."
    )
    note = models.TextField(blank=True, help_text="Why there is no figure (too few held-out questions, ...).")
    measured_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["chatbot", "measured_at"])]
