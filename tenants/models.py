from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwned


class Tenant(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    plan = models.CharField(max_length=40, default="standard")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class Membership(TenantOwned):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        VIEWER = "viewer", "Viewer"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) in {self.tenant}"

    @property
    def can_write(self) -> bool:
        return self.role in (self.Role.OWNER, self.Role.ADMIN)


class Chatbot(TenantOwned):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    embedding_model = models.CharField(
        max_length=200,
        help_text="Embedding model key, e.g. 'local:all-MiniLM-L6-v2' or 'openai:text-embedding-3-small'.",
    )
    chunk_size = models.PositiveIntegerField(default=256, help_text="Target chunk size in tokens.")
    chunk_overlap = models.PositiveIntegerField(default=32, help_text="Tokens shared by neighbouring chunks.")
    content_version = models.PositiveBigIntegerField(
        default=0, help_text="Bumped whenever the chatbot's searchable content changes."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="chatbot_unique_name"),
            models.CheckConstraint(
                condition=models.Q(chunk_size__gte=32, chunk_size__lte=8192), name="chatbot_chunk_size_range"
            ),
            models.CheckConstraint(
                condition=models.Q(chunk_overlap__lt=models.F("chunk_size") / 2), name="chatbot_overlap_lt_half"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ApiKey(TenantOwned):
    class Scope(models.TextChoices):
        SEARCH = "search", "search only"
        SEARCH_UPLOAD = "search_upload", "search and upload"

    name = models.CharField(max_length=200)
    scope = models.CharField(
        max_length=20,
        choices=Scope.choices,
        default=Scope.SEARCH_UPLOAD,
        help_text="search: search, feedback and reads; search_upload: also upload, reprocess and delete.",
    )
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible part of the key.")
    key_hash = models.CharField(max_length=64, unique=True)
    chatbot = models.ForeignKey(
        Chatbot, null=True, blank=True, on_delete=models.CASCADE, help_text="Empty: all chatbots of the tenant."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def can_upload(self) -> bool:
        return self.scope == self.Scope.SEARCH_UPLOAD

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
