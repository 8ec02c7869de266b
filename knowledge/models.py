from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

from tenants.scoping import TenantOwned


class EmbeddingSpace(models.Model):
    """A model + version + dimensions. Every stored vector names the space that produced it.

    Built-in models are global (tenant empty); a tenant's fine-tuned model will be its own space.
    Each space gets its own partial HNSW index (see ``services.embedding_space_ensure_index``).
    """

    tenant = models.ForeignKey("tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE)
    provider = models.CharField(max_length=40)
    model_name = models.CharField(max_length=200)
    version = models.CharField(max_length=40, default="1")
    dimensions = models.PositiveIntegerField()
    artifact = models.CharField(
        max_length=300,
        blank=True,
        default="",
        db_default="",  # the owner's app_global_space_ensure inserts built-in spaces without it
        help_text="A fine-tuned version's weights: a folder under TRAINING_ARTIFACTS_DIR. Empty: the built-in model.",
    )
    vectors_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adapters",
        help_text="A query adapter: documents keep that space's vectors; only queries are transformed.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_name", "version"],
                condition=models.Q(tenant__isnull=True),
                name="embeddingspace_unique_global",
            ),
            models.UniqueConstraint(
                fields=["tenant", "provider", "model_name", "version"], name="embeddingspace_unique_tenant"
            ),
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def store(self) -> "EmbeddingSpace":
        """The space whose rows hold this space's document vectors: itself, or for a query
        adapter the space it adapts. Vector SQL, ingestion and re-embedding use the store; the
        query embedding uses the space itself (``provider_for_space``)."""
        return self.vectors_from if self.vectors_from_id else self

    @property
    def model_key(self) -> str:
        return f"{self.provider}:{self.model_name}"

    @property
    def key(self) -> str:
        return f"{self.model_key}@{self.version}"


class ChatbotSpace(TenantOwned):
    """Which spaces a chatbot holds vectors in. Exactly one is active (served by search);
    others may be building (re-embedding), testing (the variant of an A/B test: it serves
    ``traffic_percent`` of the searches, and new content is embedded into it) or retired."""

    class Role(models.TextChoices):
        ACTIVE = "active", "Active"
        BUILDING = "building", "Building"
        TESTING = "testing", "Testing (A/B variant)"
        RETIRED = "retired", "Retired"

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="spaces")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.ACTIVE)
    traffic_percent = models.PositiveSmallIntegerField(
        default=0, help_text="Testing only: the share of searches (by assignment key) this space serves."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chatbot", "space"], name="chatbotspace_unique"),
            models.UniqueConstraint(
                fields=["chatbot"], condition=models.Q(role="active"), name="chatbotspace_one_active"
            ),
            models.UniqueConstraint(
                fields=["chatbot"], condition=models.Q(role="testing"), name="chatbotspace_one_testing"
            ),
        ]


class Document(TenantOwned):
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, db_index=False)  # see Chunk.tenant

    class ContentType(models.TextChoices):
        FAQ = "faq", "FAQ"
        DOCUMENT = "document", "Document"
        CONVERSATION = "conversation", "Conversation"
        PRODUCT = "product", "Product"
        POLICY = "policy", "Policy"
        OTHER = "other", "Other"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    content_type = models.CharField(max_length=20, choices=ContentType.choices, default=ContentType.DOCUMENT)
    category = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source_user_id = models.CharField(max_length=200, blank=True)
    file = models.FileField(upload_to="uploads/%Y/%m/%d/", max_length=500)
    original_filename = models.CharField(max_length=300)
    size_bytes = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, db_index=True)
    detected_type = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    quality = models.JSONField(default=dict, blank=True)
    language = models.CharField(max_length=12, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    replaces = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="replaced_by",
        help_text="Document whose chunks this one replaces atomically once it is ready.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["chatbot", "status"]),
            models.Index(fields=["chatbot", "title"]),
            models.Index(fields=["tenant", "id"], name="document_tenant_key"),  # see Chunk.tenant
        ]
        constraints = [
            models.UniqueConstraint(fields=["chatbot", "content_hash"], name="document_unique_content"),
        ]

    def __str__(self) -> str:
        return self.title


class IngestionJob(TenantOwned):
    """One run of the ingestion pipeline over a document: a claimable, resumable state machine."""

    Status = Document.Status

    class Stage(models.TextChoices):
        WAITING = "waiting", "Waiting for a worker"
        PARSING = "parsing", "Parsing"
        CHUNKING = "chunking", "Chunking"
        EMBEDDING = "embedding", "Embedding"
        FINALIZING = "finalizing", "Finalizing"
        PROVIDER_WAIT = "provider_wait", "Waiting for the embedding provider"
        DONE = "done", "Done"

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="jobs")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.WAITING)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent done, 0-100.")
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker claimed the job.")
    interruptions = models.PositiveIntegerField(default=0, help_text="Claims that never finished (worker died).")
    provider_waits = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    lease_token = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["document"],
                condition=models.Q(status__in=["queued", "processing"]),
                name="ingestionjob_one_active_per_document",
            ),
        ]


class Chunk(TenantOwned):
    # Row-level security adds ``tenant_id = <scope>`` to every statement. Until ANALYZE knows a new
    # tenant, the planner estimates one row for that condition, and a single-column tenant index
    # then wins every tie against the primary key: a lookup by id scanned all of the tenant's rows.
    # ``(tenant, id)`` serves the tenant condition and the key together (knowledge/plans.py).
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, db_index=False)
    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="chunks")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    position = models.PositiveIntegerField()
    text = models.TextField()
    context = models.TextField(
        null=True,
        blank=True,
        help_text="What the chunk is about, embedded with it and searched with it: the FAQ question, the "
        "document's title and headings. Empty: none; null: not worked out yet (chunks stored before).",
    )
    token_count = models.PositiveIntegerField()
    kind = models.CharField(max_length=20, default="text")
    page = models.PositiveIntegerField(null=True, blank=True)
    page_end = models.PositiveIntegerField(null=True, blank=True)
    heading_path = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64)
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Earlier chunk of the chatbot with the same normalised text.",
    )
    near_duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Earlier chunk of the chatbot whose embedding is nearly identical.",
    )
    search_vector = models.GeneratedField(
        expression=SearchVector("context", "text", config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "position"], name="chunk_unique_position")]
        indexes = [
            # chunks stored before contexts existed, found cheaply by the refresh (see services)
            models.Index(fields=["chatbot"], condition=models.Q(context__isnull=True), name="chunk_context_missing"),
            GinIndex(fields=["search_vector"], name="chunk_search_vector_gin"),
            # Trigram fallback for misspelled keyword queries (search.selectors.keyword_hits).
            GinIndex(fields=["text"], name="chunk_text_trgm", opclasses=["gin_trgm_ops"]),
            models.Index(fields=["chatbot", "content_hash"]),
            models.Index(fields=["tenant", "id"], name="chunk_tenant_key"),
        ]


class ChunkEmbedding(TenantOwned):
    """A chunk's vector in one space. The column has no fixed dimension so spaces of different
    sizes share the table; each space is served by its own partial HNSW index over
    ``embedding::vector(dims)`` (created by ``embedding_space_ensure_index``)."""

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="+")
    # No single-column indexes on chunk or space: the unique (chunk, space) and the (space, chatbot)
    # index lead with them, and a lone space index (one row estimated for a space the statistics
    # have not seen) was picked over both, reading every tenant's vectors in the space.
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="embeddings", db_index=False)
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.PROTECT, db_index=False)
    embedding = VectorField()
    input_hash = models.CharField(
        max_length=16,
        blank=True,
        default="",
        db_default="",
        help_text="Digest of the text embedded (a changed input is re-embedded); empty: not known (older rows).",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chunk", "space"], name="chunkembedding_unique")]
        indexes = [
            models.Index(fields=["space", "chatbot"]),
            models.Index(fields=["chatbot"], condition=models.Q(input_hash=""), name="chunkemb_input_unknown"),
        ]


class Conversation(TenantOwned):
    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="conversations")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="conversations")
    position = models.PositiveIntegerField()
    external_id = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    turn_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "position"], name="conversation_unique_position")]


class ConversationTurn(TenantOwned):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        SYSTEM = "system", "System"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=12, choices=Role.choices)
    speaker = models.CharField(max_length=200, blank=True)
    content = models.TextField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "position"], name="turn_unique_position")]


class QAPair(TenantOwned):
    """A user turn and the agent turn that answered it: searchable now, training data later."""

    chatbot = models.ForeignKey("tenants.Chatbot", on_delete=models.CASCADE, related_name="qa_pairs")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="qa_pairs")
    question_turn = models.PositiveIntegerField()
    answer_turn = models.PositiveIntegerField()
    question = models.TextField()
    answer = models.TextField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "question_turn"], name="qapair_unique_question")]
