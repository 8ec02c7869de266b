"""Settings, read from the environment in this one place.

With no environment at all the app runs on the embedded PostgreSQL and Redis under ``var/``;
production differs only by environment variables (see README, "Production").
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from chatbot_training import embedded, pooling, replicas

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = embedded.VAR_DIR

env = environ.Env()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --- Core -------------------------------------------------------------------------------
# The local stack: the embedded PostgreSQL and Redis under var/ (make run, make test): no DATABASE_URL,
# or a process that `make run` (or a test) started and attached to them (CHATBOT_KEEP_EMBEDDED=1).
EMBEDDED = not env("DATABASE_URL", default="") or env.bool("CHATBOT_KEEP_EMBEDDED", default=False)
# Debug mode only when asked for (`make dev`): `make run` serves as production does.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
DEV_SECRET_KEY = "dev-only-insecure-key-change-me-in-production"
# Secrets come from the environment; on the local stack a key is generated once and kept under var/.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="") or (embedded.secret_key() if EMBEDDED else "")
if not SECRET_KEY and DEBUG:
    SECRET_KEY = DEV_SECRET_KEY
if not DEBUG and SECRET_KEY in ("", DEV_SECRET_KEY):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set (a long random string) when DJANGO_DEBUG=0 with an external database; "
        "secrets come only from the environment."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTP security (production values wherever the site is served over HTTPS) -------------
# DJANGO_HTTPS: the site is reached over TLS (directly or behind a proxy). On by default with an
# external database (a deployment); off on the local stack, which serves http://127.0.0.1:8000.
HTTPS = env.bool("DJANGO_HTTPS", default=not EMBEDDED)
# Behind a TLS-terminating proxy set DJANGO_SECURE_PROXY_SSL_HEADER=1 (trusts X-Forwarded-Proto).
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes and scrapes inside the network
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=HTTPS)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=HTTPS)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=HTTPS)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "chatbot_training",  # the project's own commands: run_stack (make run), setup_periodic_tasks
    "tenants",
    "knowledge",
    "search",
    "training",
    "monitoring",
]

MIDDLEWARE = [
    "search.fastpath.SearchFastPathMiddleware",  # chatbot searches, before everything else
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "monitoring.middleware.UploadSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.scoping.TenantScopeMiddleware",  # row-level security scope of the request
    "tenants.audit.AuditActorMiddleware",
    "tenants.authentication.LoginDeviceCookieMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "chatbot_training.urls"
WSGI_APPLICATION = "chatbot_training.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.current_tenant",
                "monitoring.context_processors.active_alerts",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------
# Three roles (tenants/dbroles.py): the app connects as DATABASE_URL's role, which owns
# nothing and sees one tenant's rows at a time (row-level security); cross-tenant maintenance
# (sweeper, index upkeep, staff in the admin) connects as DATABASE_MAINTENANCE_URL's role, which
# the policies name; DATABASE_OWNER_URL's role owns the tables and runs migrations and index
# builds. The embedded PostgreSQL creates all three.
if env("DATABASE_URL", default=""):
    DATABASE_URL = env("DATABASE_URL")
    DATABASE_OWNER_URL = env("DATABASE_OWNER_URL", default="") or DATABASE_URL
    DATABASE_MAINTENANCE_URL = env("DATABASE_MAINTENANCE_URL", default="") or DATABASE_OWNER_URL
else:
    _app_url, _owner_url, _maintenance_url = embedded.postgres_urls()
    DATABASE_URL = _app_url
    DATABASE_OWNER_URL = env("DATABASE_OWNER_URL", default="") or _owner_url
    DATABASE_MAINTENANCE_URL = env("DATABASE_MAINTENANCE_URL", default="") or _maintenance_url
DATABASE_APP = env.db_url_config(DATABASE_URL)
DATABASE_OWNER = env.db_url_config(DATABASE_OWNER_URL)
DATABASE_MAINTENANCE = env.db_url_config(DATABASE_MAINTENANCE_URL)
# Statements are cut off after this long: short for web requests (a request must never hold the
# database), long for workers, beat and management commands. The web entry point
# (chatbot_training/wsgi.py) says it is one with CHATBOT_PROCESS=web.
PROCESS_KIND = env("CHATBOT_PROCESS", default="worker")
DATABASE_STATEMENT_TIMEOUT_MS = (
    env.int("DATABASE_REQUEST_STATEMENT_TIMEOUT_MS", default=15_000)
    if PROCESS_KIND == "web"
    else env.int("DATABASE_WORKER_STATEMENT_TIMEOUT_MS", default=30 * 60_000)
)


def _database(url: str) -> dict:
    config = env.db_url_config(url)
    # PostgreSQL with django-prometheus's metrics and the row-level security scope of each transaction.
    config["ENGINE"] = "chatbot_training.postgresql"
    config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    # A health check is a SELECT 1 round trip at the start of every request; a connection that
    # breaks is discarded at the end of the request that met the error anyway.
    config["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
    options = config.setdefault("OPTIONS", {})
    # Server-side prepared statements for the few raw queries that ask for them (the cached-search
    # fast path); the ORM keeps client-side binding. Set 0 behind a transaction-mode pgbouncer.
    options["prepare_threshold"] = env.int("DATABASE_PREPARE_THRESHOLD", default=5) or None
    options["options"] = f"-c statement_timeout={int(DATABASE_STATEMENT_TIMEOUT_MS)}"
    return pooling.configure(config, env)


DATABASES = {"default": _database(DATABASE_URL), "maintenance": _database(DATABASE_MAINTENANCE_URL)}
# Streaming replicas for search reads (chatbot_training/replicas.py): DATABASE_REPLICA_URLS.
DATABASES.update(replicas.databases(env, _database))
# Queries inside tenants.scoping.cross_tenant_context go to the maintenance connection.
DATABASE_ROUTERS = ["tenants.routers.ScopeRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and Celery -------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="") or embedded.redis_url()

# Search (see search/services.py and README "Search").
# Cache keys are prefixed with the database name: a fresh database never reads an old one's entries.
SEARCH_CACHE_PREFIX = env("SEARCH_CACHE_PREFIX", default="") or f"search:{DATABASES['default']['NAME']}:"
# Seconds a Redis call may take before its caller goes on without Redis (tenants/redis_client.py);
# SEARCH_CACHE_TIMEOUT is its earlier name.
REDIS_TIMEOUT = env.float("REDIS_TIMEOUT", default=env.float("SEARCH_CACHE_TIMEOUT", default=0.25))
SEARCH_RESULTS_CACHE_TTL = env.int("SEARCH_RESULTS_CACHE_TTL", default=3600)
SEARCH_EMBEDDING_CACHE_TTL = env.int("SEARCH_EMBEDDING_CACHE_TTL", default=7 * 24 * 3600)
# Filtered candidate sets up to this size are searched exactly (true nearest neighbours).
SEARCH_EXACT_MAX = env.int("SEARCH_EXACT_MAX", default=1500)
SEARCH_HNSW_EF_SEARCH = env.int("SEARCH_HNSW_EF_SEARCH", default=200)
SEARCH_HNSW_EF_SEARCH_OWN_INDEX = env.int("SEARCH_HNSW_EF_SEARCH_OWN_INDEX", default=100)
SEARCH_HNSW_MAX_SCAN_TUPLES = env.int("SEARCH_HNSW_MAX_SCAN_TUPLES", default=40000)
# The optimizer (search/services/optimize/): queries it samples to tune a chatbot, the ef_search
# ladder it measures, how much faster exact search must be to serve always, and the dead-tuple
# share (of live rows) past which it vacuums the vector tables or rebuilds a chatbot's index.
OPTIMIZE_SAMPLE_QUERIES = env.int("OPTIMIZE_SAMPLE_QUERIES", default=200)
OPTIMIZE_EF_LADDER = env.list(
    "OPTIMIZE_EF_LADDER", cast=int, default=[10, 20, 40, 64, 100, 150, 200, 300, 400, 600, 800]
)
OPTIMIZE_EXACT_FASTER_BY = env.float("OPTIMIZE_EXACT_FASTER_BY", default=1.0)  # exact p95 <= HNSW p95 x this
# Stored vectors stand in for queries when logs are few, moved off their chunk by noise of this length.
OPTIMIZE_SELF_QUERY_NOISE = env.float("OPTIMIZE_SELF_QUERY_NOISE", default=1.0)
OPTIMIZE_VACUUM_DEAD_SHARE = env.float("OPTIMIZE_VACUUM_DEAD_SHARE", default=0.1)
OPTIMIZE_REINDEX_DEAD_SHARE = env.float("OPTIMIZE_REINDEX_DEAD_SHARE", default=0.2)
OPTIMIZE_REINDEX_BLOAT = env.float("OPTIMIZE_REINDEX_BLOAT", default=2.0)  # index size / expected size
OPTIMIZE_STALE_AFTER_SECONDS = env.int("OPTIMIZE_STALE_AFTER_SECONDS", default=1800)  # a silent run is failed
# Search logs go through a Redis list and are written in batches (search/logbuffer.py).
SEARCH_LOG_BUFFER = env.bool("SEARCH_LOG_BUFFER", default=True)
SEARCH_LOG_FLUSH_SECONDS = env.float("SEARCH_LOG_FLUSH_SECONDS", default=1.0)
SEARCH_LOG_FLUSHER_THREAD = env.bool("SEARCH_LOG_FLUSHER_THREAD", default=True)  # off in tests
# The fast path's memory of key/chatbot context (search/access.py): a row is read again after
# this many seconds at most, and a listener that does not hear its own ping within the timeout
# is presumed dead (nothing is remembered until a fresh one answers).
ACCESS_CONTEXT_MAX_AGE = env.float("ACCESS_CONTEXT_MAX_AGE", default=5.0)
ACCESS_LISTENER_TIMEOUT = env.float("ACCESS_LISTENER_TIMEOUT", default=3.0)
# A search whose best cosine similarity is below this is a knowledge gap ("low score").
SEARCH_LOW_SCORE = env.float("SEARCH_LOW_SCORE", default=0.35)
# Vector analysis (search/services/analysis/): at most this many chunks are analysed (past it a sample).
VECTOR_ANALYSIS_MAX_CHUNKS = env.int("VECTOR_ANALYSIS_MAX_CHUNKS", default=20_000)


def _kombu_url(url: str) -> str:
    # redis-py says unix:///path, kombu says redis+socket:///path
    return "redis+socket://" + url[len("unix://") :] if url.startswith("unix://") else url


CELERY_BROKER_URL = _kombu_url(REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A request that queues a job must not hang on a broker that is down: a few quick tries, then the
# job stays queued in the database for the sweeper (knowledge.services.jobs.job_enqueue).
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", default="celery")
# Fine-tunes and deploys (re-embedding a chatbot) have a queue and a worker of their own, so an
# upload is never stuck behind a training job.
CELERY_TRAINING_QUEUE = env("CELERY_TRAINING_QUEUE", default="training")
CELERY_TASK_ROUTES = {
    "training.training_job_run": {"queue": CELERY_TRAINING_QUEUE},
    "training.model_version_deploy": {"queue": CELERY_TRAINING_QUEUE},
    "training.ab_test_prepare": {"queue": CELERY_TRAINING_QUEUE},
}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True

# --- Auth, i18n, static -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
AUTHENTICATION_BACKENDS = ["tenants.authentication.ThrottledModelBackend"]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "templates" / "static"]
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(VAR_DIR / "media"))
MEDIA_URL = "/media/"

# --- Uploads ----------------------------------------------------------------------------
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=50 * 1024 * 1024)
DASHBOARD_MAX_FILES = env.int("DASHBOARD_MAX_FILES", default=20)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = DASHBOARD_MAX_FILES

# --- Ingestion and embeddings -----------------------------------------------------------
EMBEDDING_DEFAULT_MODEL = env("EMBEDDING_DEFAULT_MODEL", default="local:all-MiniLM-L6-v2")
# Threads torch may use per process for local embeddings (0 = torch's default: all cores). Set
# 1 when several web workers share the cores.
EMBEDDING_TORCH_THREADS = env.int("EMBEDDING_TORCH_THREADS", default=0)
# Single texts (search queries) through ONNX Runtime ("onnx") or PyTorch ("torch").
EMBEDDING_QUERY_RUNTIME = env.str("EMBEDDING_QUERY_RUNTIME", default="onnx")
# Batches (documents being ingested or re-embedded): "onnx-int8" (ONNX Runtime, matrix products
# quantised per channel: 2.2x PyTorch's texts/s on FAQ entries, 1.0-1.1x on long passages,
# held-out nDCG@10 within 0.001; knowledge/onnx_encoder.py) or "torch" (PyTorch's exact vectors).
# Queries keep EMBEDDING_QUERY_RUNTIME either way.
EMBEDDING_DOCUMENT_RUNTIME = env.str("EMBEDDING_DOCUMENT_RUNTIME", default="onnx-int8")
# A chatbot with more vectors than this in a space gets its own partial HNSW index there (built by
# the knowledge.vector_indexes_optimize task); smaller ones are searched exactly (SEARCH_EXACT_MAX).
VECTOR_CHATBOT_INDEX_MIN = env.int("VECTOR_CHATBOT_INDEX_MIN", default=1500)
EMBEDDING_BATCH_SIZE = env.int("EMBEDDING_BATCH_SIZE", default=256)  # chunks per encode + insert round
# Fine-tuned versions' weights (each embedding space's artifact, a folder under this directory),
# and how many of them one process keeps loaded at once (least recently used dropped first).
TRAINING_ARTIFACTS_DIR = env.path("TRAINING_ARTIFACTS_DIR", default=str(VAR_DIR / "models" / "versions"))
EMBEDDING_MAX_LOADED_VERSIONS = env.int("EMBEDDING_MAX_LOADED_VERSIONS", default=4)
# --- Stored files -----------------------------------------------------------------------
# Uploads (the "default" storage) and model artifacts ("artifacts", knowledge/artifacts.py) live
# on this host's disk (MEDIA_ROOT, TRAINING_ARTIFACTS_DIR) or, with STORAGE_S3_BUCKET, in one S3
# bucket every host shares (django-storages; prefixes media/ and models/). Hosts then keep only a
# local copy of the artifacts they serve, under TRAINING_ARTIFACTS_DIR.
STORAGE_S3_BUCKET = env("STORAGE_S3_BUCKET", default="")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "artifacts": {"BACKEND": "knowledge.artifacts.LocalArtifactStorage"},  # TRAINING_ARTIFACTS_DIR
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if STORAGE_S3_BUCKET:
    _s3_endpoint = env("STORAGE_S3_ENDPOINT_URL", default="") or None  # MinIO, Ceph, moto, R2 ...
    _s3 = {
        "bucket_name": STORAGE_S3_BUCKET,
        "endpoint_url": _s3_endpoint,
        "region_name": env("STORAGE_S3_REGION", default="") or None,
        # None: boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an instance or pod role)
        "access_key": env("STORAGE_S3_ACCESS_KEY_ID", default="") or None,
        "secret_key": env("STORAGE_S3_SECRET_ACCESS_KEY", default="") or None,
        "addressing_style": env("STORAGE_S3_ADDRESSING_STYLE", default="path" if _s3_endpoint else "") or None,
        "default_acl": None,  # private objects; the app reads them, never the browser
        "querystring_auth": True,
    }
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {**_s3, "location": "media", "file_overwrite": False},
    }
    STORAGES["artifacts"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {**_s3, "location": "models", "file_overwrite": True},
    }


# --- Training (training/) -----------------------------------------------------------------
TRAINING_MIN_PAIRS = env.int("TRAINING_MIN_PAIRS", default=50)  # training pairs a job needs
TRAINING_HELDOUT_PERCENT = env.int("TRAINING_HELDOUT_PERCENT", default=20)  # of queries, never trained on
TRAINING_SPLIT_SEED = env.str("TRAINING_SPLIT_SEED", default="chatbot-training")
TRAINING_MIN_HELDOUT = env.int("TRAINING_MIN_HELDOUT", default=10)  # held-out questions to judge a version
# The gate: a candidate must beat the active version by this much nDCG@10 (with a paired-bootstrap
# 95% interval above zero), and may lose at most TRAINING_MAX_SOURCE_LOSS on any one source.
TRAINING_MIN_GAIN = env.float("TRAINING_MIN_GAIN", default=0.005)
TRAINING_MAX_SOURCE_LOSS = env.float("TRAINING_MAX_SOURCE_LOSS", default=0.02)
TRAINING_DEVICE = env.str("TRAINING_DEVICE", default="auto")  # auto: CUDA when present, else CPU
# bf16 autocast of the query-encoder job: auto = on CUDA devices that have bf16, off on CPU (on this
# project's AVX-512 BF16 CPU it measured slower than fp32: bench/training.py); on / off force it
TRAINING_BF16 = env.str("TRAINING_BF16", default="auto")
# The query encoder ranks each query against every stored chunk vector; past this many it takes a
# fresh random sample of this size a step (plus the batch's answers): the product stays cheap.
TRAINING_QUERY_ENCODER_MAX_NEGATIVES = env.int("TRAINING_QUERY_ENCODER_MAX_NEGATIVES", default=100_000)
TRAINING_HEARTBEAT_SECONDS = env.float("TRAINING_HEARTBEAT_SECONDS", default=10)
TRAINING_STALE_AFTER_SECONDS = env.int("TRAINING_STALE_AFTER_SECONDS", default=300)
TRAINING_MAX_ATTEMPTS = env.int("TRAINING_MAX_ATTEMPTS", default=3)
TRAINING_MAX_SYNTHETIC = env.int("TRAINING_MAX_SYNTHETIC", default=2000)  # synthetic pairs per chatbot
# LLM-written questions (source "llm") through the openai client (OPENAI_API_KEY, OPENAI_BASE_URL):
# off unless a chat model is named; at most this many new chunks asked per collection.
TRAINING_LLM_MODEL = env.str("TRAINING_LLM_MODEL", default="")
TRAINING_LLM_QUESTIONS = env.int("TRAINING_LLM_QUESTIONS", default=200)
# Hard negatives: skip the nearest ranks and keep a margin below the positive's score, so
# paraphrases of the answer are not taken for negatives.
TRAINING_NEGATIVE_SKIP_RANKS = env.int("TRAINING_NEGATIVE_SKIP_RANKS", default=3)
TRAINING_NEGATIVE_MARGIN = env.float("TRAINING_NEGATIVE_MARGIN", default=0.05)
# A/B tests of model versions (training/services/abtests.py): significance level and power of the
# two-proportion z-test on the helpful-feedback rate, the smallest difference worth detecting
# (while none is observed), and the guardrails that stop a variant that is clearly worse.
AB_TEST_ALPHA = env.float("AB_TEST_ALPHA", default=0.05)
AB_TEST_POWER = env.float("AB_TEST_POWER", default=0.8)
AB_TEST_MIN_EFFECT = env.float("AB_TEST_MIN_EFFECT", default=0.05)
AB_GUARDRAIL_MIN_SEARCHES = env.int("AB_GUARDRAIL_MIN_SEARCHES", default=200)  # per arm before a guardrail may trip
AB_GUARDRAIL_ZERO_RESULT_POINTS = env.float("AB_GUARDRAIL_ZERO_RESULT_POINTS", default=0.05)  # worse by 5 pp ...
AB_GUARDRAIL_P = env.float("AB_GUARDRAIL_P", default=0.01)  # ... and one-sided p below this
AB_GUARDRAIL_LATENCY_RATIO = env.float("AB_GUARDRAIL_LATENCY_RATIO", default=1.5)  # variant p95 over control's ...
AB_GUARDRAIL_LATENCY_MS = env.float("AB_GUARDRAIL_LATENCY_MS", default=50)  # ... and this many ms slower
OPENAI_API_KEY = env("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env("OPENAI_BASE_URL", default="") or None
OPENAI_TIMEOUT_SECONDS = env.float("OPENAI_TIMEOUT_SECONDS", default=30.0)
OPENAI_MAX_RETRIES = env.int("OPENAI_MAX_RETRIES", default=4)
INGESTION_STALE_AFTER_SECONDS = env.int("INGESTION_STALE_AFTER_SECONDS", default=300)
INGESTION_MAX_ATTEMPTS = env.int("INGESTION_MAX_ATTEMPTS", default=3)
# Parsing runs in a child process with these limits (knowledge/parsers/sandbox.py).
PARSER_SANDBOX = env.bool("PARSER_SANDBOX", default=True)
PARSER_MEMORY_MB = env.int("PARSER_MEMORY_MB", default=1024)
PARSER_CPU_SECONDS = env.int("PARSER_CPU_SECONDS", default=120)
PARSER_WALL_SECONDS = env.float("PARSER_WALL_SECONDS", default=180)
# After parsing, splitting the text into chunks (and checking them) has a limit of its own, CPU and wall.
INGESTION_CHUNKING_SECONDS = env.float("INGESTION_CHUNKING_SECONDS", default=120)
# A running job's heartbeat, sent by a thread of its own whatever the job is doing (well below the
# stale age at which the sweeper hands a silent job to another worker).
INGESTION_HEARTBEAT_SECONDS = env.float("INGESTION_HEARTBEAT_SECONDS", default=10)
INGESTION_PROVIDER_MAX_WAIT_RETRIES = env.int("INGESTION_PROVIDER_MAX_WAIT_RETRIES", default=12)
NEAR_DUPLICATE_SIMILARITY = env.float("NEAR_DUPLICATE_SIMILARITY", default=0.97)

# --- REST framework ---------------------------------------------------------------------
# Requests per minute per API key, by the tenant's plan (JSON to override, e.g. '{"standard": 1200}').
API_RATE_LIMITS = {"free": 60, "standard": 600, "enterprise": 6000, **env.json("API_RATE_LIMITS", default={})}
API_KEY_ROTATION_GRACE_SECONDS = env.int("API_KEY_ROTATION_GRACE_SECONDS", default=24 * 3600)  # old key's overlap
# Login throttling (tenants/ratelimit.py): per address, a hard limit within the window; per account,
# back-off after the free failures (2, 4, 8 ... s, capped), never a lock-out.
LOGIN_FAILURES_WINDOW_SECONDS = env.int("LOGIN_FAILURES_WINDOW_SECONDS", default=900)
LOGIN_ADDRESS_FAILURES_MAX = env.int("LOGIN_ADDRESS_FAILURES_MAX", default=30)
LOGIN_ACCOUNT_FREE_FAILURES = env.int("LOGIN_ACCOUNT_FREE_FAILURES", default=5)
LOGIN_ACCOUNT_MAX_DELAY_SECONDS = env.int("LOGIN_ACCOUNT_MAX_DELAY_SECONDS", default=300)
# Addresses (or networks) of reverse proxies whose X-Forwarded-For is believed, e.g. "10.0.0.0/8".
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])


def _networks(values):
    import ipaddress

    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip())


TRUSTED_PROXY_NETWORKS = _networks(TRUSTED_PROXIES)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.authentication.ApiKeyRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "tenants.apis.TenantAutoSchema",
    "EXCEPTION_HANDLER": "tenants.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "chatbot-training API",
    "DESCRIPTION": "Knowledge ingestion and search for customer-support chatbots. "
    "Authenticate with `Authorization: Bearer <api key>`.",
    "VERSION": "1.0.0",
    # OpenAPI 3.1: full JSON Schema (propertyNames, type null), so the filter language is stated exactly.
    "OAS_VERSION": "3.1.0",
    # several "status" fields: each choice set gets a name of its own
    "ENUM_NAME_OVERRIDES": {
        "DocumentStatusEnum": ["queued", "processing", "ready", "failed"],
        "TrainingJobStatusEnum": "training.models.TrainingJob.Status",
        "ModelVersionStatusEnum": "training.models.ModelVersion.Status",
    },
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chatbot_training.openapi.add_error_responses",
    ],
}

# --- Alerts (monitoring/alerts/) -------------------------------------------------------
# Deliveries: webhook timeout, retries with exponential backoff (base x 2^(attempt-1)), then failed.
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", default=5.0)
ALERT_NOTIFY_BACKOFF_SECONDS = env.float("ALERT_NOTIFY_BACKOFF_SECONDS", default=30.0)
ALERT_NOTIFY_MAX_ATTEMPTS = env.int("ALERT_NOTIFY_MAX_ATTEMPTS", default=6)
# Webhooks to private, loopback or link-local addresses are refused unless this is on.
ALERT_WEBHOOK_ALLOW_PRIVATE = env.bool("ALERT_WEBHOOK_ALLOW_PRIVATE", default=False)
# Alert emails: the console by default (the embedded stack has no mail server); SMTP via env.
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="alerts@chatbot-training.local")

# --- Prometheus (/metrics, monitoring/) ------------------------------------------------
# Every process (web workers, Celery workers, beat) writes its counters and histograms to files
# of its own in this directory, and /metrics adds them up (prometheus_client's multiprocess mode;
# the directory is emptied when the stack starts). Set before any metric exists: prometheus_client
# reads it once, at import, which comes after the settings.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "prometheus"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# The gauges /metrics computes when scraped (queue depth, documents, vectors, recall, nDCG): at
# most this many chatbots get series of their own (the largest by vectors), recomputed at most
# every METRICS_GAUGES_TTL seconds per process.
METRICS_MAX_CHATBOTS = env.int("METRICS_MAX_CHATBOTS", default=100)
METRICS_GAUGES_TTL = env.float("METRICS_GAUGES_TTL", default=15.0)
# When set, /metrics answers only requests with "Authorization: Bearer <METRICS_TOKEN>" (it names
# chatbot ids and counts); unset, restrict it at the network (the embedded stack listens on 127.0.0.1).
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# --- Logging ----------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "pgserver": {"level": "WARNING"},
        "pypdf": {"level": "ERROR"},
        "django.db.backends": {"level": "INFO"},
        "sentence_transformers": {"level": "WARNING"},
    },
}
