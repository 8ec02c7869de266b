from django.conf import settings
from django.contrib.postgres.fields import ArrayField
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


def default_key_scopes() -> list[str]:
    return ["search"]


class ApiKey(TenantOwned):
    class Scope(models.TextChoices):
        """What a key may do, least privilege first; a key holds any combination."""

        SEARCH = "search", "search"
        READ = "read", "read"
        WRITE = "write", "write"

    SCOPE_HELP = {
        "search": "search and send feedback on results: all a chat widget needs (the key is public there)",
        "read": "read documents and their chunks' text, the document list, search logs and analytics",
        "write": "upload, reprocess and delete documents",
    }

    name = models.CharField(max_length=200)
    scopes = ArrayField(
        models.CharField(max_length=10, choices=Scope.choices),
        default=default_key_scopes,
        help_text="search: search and feedback; read: documents, chunks, logs, analytics; write: upload, "
        "reprocess, delete.",
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

    def allows(self, scope: str) -> bool:
        return scope in (self.scopes or ())

    @property
    def scope_label(self) -> str:
        return ", ".join(s for s in self.Scope.values if s in (self.scopes or ())) or "nothing"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditEvent(models.Model):
    """A security-relevant action: who, what, when, from where, for which tenant. Append-only: a
    database trigger refuses UPDATE and DELETE (tenants/migrations/0004_auditevent.py), and the row
    keeps its tenant id even after the tenant is gone (no foreign key to cascade or null it)."""

    class Action(models.TextChoices):
        LOGIN = "login", "login"
        LOGIN_FAILED = "login_failed", "failed login"
        KEY_CREATE = "key_create", "API key created"
        KEY_REVOKE = "key_revoke", "API key revoked"
        KEY_ROTATE = "key_rotate", "API key rotated"
        UPLOAD = "upload", "upload"
        DOCUMENT_DELETE = "document_delete", "document deleted"
        ADMIN_CHANGE = "admin_change", "admin change"
        STAFF_ACCESS = "staff_access", "staff access"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    action = models.CharField(max_length=30, choices=Action.choices)
    actor = models.CharField(max_length=200, help_text="username, or api-key:<prefix>")
    user_id = models.BigIntegerField(null=True, blank=True)
    api_key_prefix = models.CharField(max_length=16, blank=True)
    target = models.CharField(max_length=300, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant_id", "-created_at"], name="audit_tenant_recent")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.target}"
