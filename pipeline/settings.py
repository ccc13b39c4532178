"""Trainyard settings: one module, read from the environment.

Defaults serve the standalone run (SQLite under var/, in-process worker and channel
layer). Production sets TRAINYARD_ENV=production, DATABASE_URL, REDIS_URL, SECRET_KEY.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name, default):
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_secret(name, default=""):
    """A secret from NAME, or from the file named by NAME_FILE (Docker/K8s secrets)."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return default


PRODUCTION = env_str("TRAINYARD_ENV", "standalone") == "production"
VAR_DIR = Path(env_str("TRAINYARD_VAR_DIR", str(BASE_DIR / "var")))
DEBUG = env_bool("DEBUG", False) and not PRODUCTION


def _private_database(path):
    """Create the SQLite file (empty: an empty database) readable by its owner only, and
    make it and its -wal and -shm files so if an earlier version left them 0644. SQLite
    creates -wal and -shm with the database file's own mode, so they stay private too."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            file.chmod(0o600)
        except FileNotFoundError:
            pass  # no -wal or -shm while no connection is open


if not PRODUCTION:
    # Standalone, var/ holds the secret key, the database (sessions, API token hashes) and
    # mirrors and checkouts of the team's code: its owner's alone, whatever the umask
    # (earlier versions left it 0755). Production's folders are the operator's to set.
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    VAR_DIR.chmod(0o700)


def _secret_key():
    key = env_secret("SECRET_KEY")
    if key:
        if PRODUCTION and (len(key) < 50 or key.startswith("django-insecure")):
            raise ImproperlyConfigured("SECRET_KEY is too weak for production (50+ random chars).")
        return key
    if PRODUCTION:
        raise ImproperlyConfigured(
            "TRAINYARD_ENV=production needs SECRET_KEY (or SECRET_KEY_FILE) in the environment."
        )
    # Standalone: a key generated once and kept under var/, never a default in the code.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "django_celery_beat",
    "pipeline",
    "nodes",
    "radiators",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pipeline.urls"
WSGI_APPLICATION = "pipeline.wsgi.application"
ASGI_APPLICATION = "pipeline.asgi.application"

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
                "pipeline.context_processors.inbox",
            ],
        },
    },
]

# Database: PostgreSQL from DATABASE_URL, else SQLite under var/ (standalone).
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # A connection whose backend PostgreSQL ended (restart, failover,
        # pg_terminate_backend) is replaced instead of failing the request or task that
        # drew it: with the pool, each connection is tried (an empty query) as it leaves the
        # pool (Django passes psycopg_pool's check_connection); without, a kept connection is
        # tried before a request or task uses it again.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        # Trainyard's queries are short and indexed: PostgreSQL's JIT only adds its compile
        # time (the wall's page took 69 ms instead of 32 with 1M test results stored, when
        # the planner's estimate crossed jit_above_cost). Off for Trainyard's connections.
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
        # ASGI + persistent connections exhausts PostgreSQL; the built-in pool does not.
        if env_bool("DB_POOL", True):
            DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 20}
            DATABASES["default"]["CONN_MAX_AGE"] = 0
        else:
            DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60)
else:
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    # It holds session keys and API token hashes.
    _private_database(VAR_DIR / "trainyard.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "trainyard.sqlite3",
            # The worker threads write while the web serves: WAL + IMMEDIATE + a busy timeout.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not :memory:, so worker threads in tests see the same database; one
            # per process, so two test runs side by side do not share it.
            "TEST": {"NAME": VAR_DIR / f"test-{os.getpid()}.sqlite3"},
            # Kept across tasks and requests: closed after each (Django's default, 0), every
            # task opened a new one, 3.5 ms of CPU (its PRAGMAs and functions) for nothing.
            # An idle connection holds no lock in WAL mode.
            "CONN_MAX_AGE": env_int("CONN_MAX_AGE", 60),
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root

# Content-Security-Policy on every response (django-csp; Django 5.2 has none built in).
# Pages load scripts, styles, images and fonts from this origin only and talk only to it
# (fetch, the radiator's websocket: CSP 3 lets 'self' match ws:/wss: on the same host).
# No inline script or style anywhere, not even nonce'd: templates use static files, data
# attributes and classes (tests/test_page_security.py keeps them so). No plugins, no
# <base>, forms post only here, and no other site may frame a page.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LOGIN_URL = "login"
LOGOUT_REDIRECT_URL = "/"
LOGIN_REDIRECT_URL = "/"

# Redis: broker and channel layer in production; in-process otherwise.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The core RedisChannelLayer drops messages past capacity and after
            # group_expiry, and times out with redis-py 8: pub/sub does neither.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("CHANNELS_PREFIX", "trainyard")},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "radiators.layers.ThreadSafeInMemoryChannelLayer"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://")
if CELERY_BROKER_URL.startswith("memory"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.01}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Redelivery of a message nobody acknowledged. Dead workers do not rely on it (jobs
        # heartbeat to the database and the reaper re-queues silent ones within a minute),
        # so it only has to outlast the longest job (TRAINYARD_MAX_JOB_TIMEOUT, 2 h) with
        # room for its checkout: a job that is still running is never delivered twice.
        "visibility_timeout": env_int(
            "CELERY_VISIBILITY_TIMEOUT", env_int("TRAINYARD_MAX_JOB_TIMEOUT", 2 * 3600) + 3600),
        # A Redis that went away: connecting gives up after 1 s and waiting for a reply
        # after 2 s (above kombu's 1 s BRPOP), so nothing hangs; a worker then reconnects.
        "socket_connect_timeout": 1,
        "socket_timeout": 2,
        # A timed-out command is not sent again by redis-py (that would double the wait):
        # the worker reconnects, and a publish fails fast (policy below).
        "retry_on_timeout": False,
        # PING connections idle this long before use; kombu also drops a BRPOP or pub/sub
        # connection that went silent (a half-open socket) within 1 s + 2 x this.
        "health_check_interval": 10,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Declared, so a worker started without --queues consumes all three (not only "default").
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name)
                      for name in ("default", "checks", "deploys")]
CELERY_TASK_ROUTES = {
    "pipeline.tasks.run_job": {"queue": "checks"},
    "nodes.tasks.*": {"queue": "deploys"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_REDIRECT_STDOUTS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker that lost Redis reconnects for as long as it takes (the default gives up after
# 100 attempts and exits).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# A job's outcome goes to PostgreSQL, not through the broker: a task running when Redis
# goes away finishes and records its result (only its ack is lost; running twice is
# harmless). Cancelling it would throw the work away and wait for the reaper.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Publishing (a web request, a task queueing the next) fails fast when Redis is away, with
# kombu.exceptions.OperationalError, so the web can answer 503: at once when Redis refuses
# connections (down, restarting), after socket_connect_timeout when it is unreachable,
# after socket_timeout (2 s) when it accepts but does not answer. No retries: redis-py
# already replaces a pooled connection that died while idle (a Redis restart), and each
# retry against a hung Redis costs another 2 s or more (one retry measured 6 s).
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 0}
CELERY_TIMEZONE = TIME_ZONE
# Each task otherwise closes its DB connection: ~80 tasks/s at best. Safe to reuse:
# pipeline/celery.py drops broken connections around every task (close_old_connections),
# and the pool checks (or CONN_HEALTH_CHECKS tries) a connection before it is used.
CELERY_DB_REUSE_MAX = 100

# Trainyard itself.
TRAINYARD = {
    "WORKSPACE_DIR": Path(env_str("TRAINYARD_WORKSPACE_DIR", str(VAR_DIR / "workspaces"))),
    "CHECK_TIMEOUT": env_int("TRAINYARD_CHECK_TIMEOUT", 15 * 60),
    "OUTPUT_CAP_BYTES": env_int("TRAINYARD_OUTPUT_CAP_BYTES", 1024 * 1024),
    "GIT_TIMEOUT": env_int("TRAINYARD_GIT_TIMEOUT", 120),
    "EMBEDDED_WORKER": env_bool("TRAINYARD_EMBEDDED_WORKER", not PRODUCTION),
    # The private key Trainyard logs in to SSH nodes with (its path; never the key itself).
    "SSH_KEY_FILE": env_str("TRAINYARD_SSH_KEY_FILE"),
    "DEPLOY_TIMEOUT": env_int("TRAINYARD_DEPLOY_TIMEOUT", 10 * 60),
    # A deploy with no usable branch node waits this long (saying why), then ends in error.
    "NODE_WAIT_TIMEOUT": env_int("TRAINYARD_NODE_WAIT_TIMEOUT", 30 * 60),
    "NODE_BASE_DIR": Path(env_str("TRAINYARD_NODE_DIR", str(VAR_DIR / "nodes"))),
    "NODE_FIRST_PORT": env_int("TRAINYARD_NODE_FIRST_PORT", 9101),
    # Running user code: the sandbox ("bwrap", or "off" to run checks unsandboxed).
    "SANDBOX": env_str("TRAINYARD_SANDBOX", "bwrap"),
    "CACHE_DIR": Path(env_str("TRAINYARD_CACHE_DIR", str(VAR_DIR / "cache"))),
    "CACHE_MAX_BYTES": env_int("TRAINYARD_CACHE_MAX_BYTES", 5 * 1024**3),
    # Limits that keep one branch from starving the rest.
    "MAX_CHECKS": env_int("TRAINYARD_MAX_CHECKS", 50),
    "MAX_SPEC_VALUES": env_int("TRAINYARD_MAX_SPEC_VALUES", 5000),
    "MAX_COMMAND_BYTES": env_int("TRAINYARD_MAX_COMMAND_BYTES", 32 * 1024),
    "MAX_JOB_TIMEOUT": env_int("TRAINYARD_MAX_JOB_TIMEOUT", 2 * 3600),
    "WORKSPACE_MAX_BYTES": env_int("TRAINYARD_WORKSPACE_MAX_BYTES", 4 * 1024**3),
    # A job's checkout is deleted when the worker runs no job and it is this old
    # (pipeline/services/trash.py); at once beyond MAX_ENTRIES or below MIN_FREE_BYTES.
    "WORKSPACE_TRASH_DELAY": env_int("TRAINYARD_WORKSPACE_TRASH_DELAY", 5),
    "WORKSPACE_TRASH_MAX_ENTRIES": env_int("TRAINYARD_WORKSPACE_TRASH_MAX_ENTRIES", 200),
    "WORKSPACE_TRASH_MIN_FREE_BYTES": env_int("TRAINYARD_WORKSPACE_TRASH_MIN_FREE_BYTES",
                                              5 * 1024**3),
    "JOBS_PER_BUILD": env_int("TRAINYARD_JOBS_PER_BUILD", 4),
    "JOBS_PER_REPOSITORY": env_int("TRAINYARD_JOBS_PER_REPOSITORY", 8),
    # Git: a web request waits briefly, a worker longer; syncs skip a busy mirror.
    "GIT_REQUEST_TIMEOUT": env_int("TRAINYARD_GIT_REQUEST_TIMEOUT", 20),
    "GIT_SYNC_TIMEOUT": env_int("TRAINYARD_GIT_SYNC_TIMEOUT", 60),
    # Recovery: a running job beats every HEARTBEAT_SECONDS; silent for HEARTBEAT_TIMEOUT
    # means its worker died. Such a job runs again up to JOB_ATTEMPTS times in all.
    "HEARTBEAT_SECONDS": env_int("TRAINYARD_HEARTBEAT_SECONDS", 5),
    "HEARTBEAT_TIMEOUT": env_int("TRAINYARD_HEARTBEAT_TIMEOUT", 30),
    "JOB_ATTEMPTS": env_int("TRAINYARD_JOB_ATTEMPTS", 2),
    # The deploy train: production nodes per batch (after the off-cycle ones), how long a
    # whole production rollout may take, when authors who have not answered are reminded.
    "TRAIN_BATCH_SIZE": env_int("TRAINYARD_TRAIN_BATCH_SIZE", 10),
    "PRODUCTION_TIMEOUT": env_int("TRAINYARD_PRODUCTION_TIMEOUT", 60 * 60),
    "APPROVAL_REMINDER": env_int("TRAINYARD_APPROVAL_REMINDER", 30 * 60),
    "TRAIN_MAX_COMMITS": env_int("TRAINYARD_TRAIN_MAX_COMMITS", 200),
    # Approval requests and reminders: the inbox always, e-mail to users who have an
    # address, and a Slack-compatible incoming webhook when this is set.
    "SLACK_WEBHOOK_URL": env_secret("TRAINYARD_SLACK_WEBHOOK_URL"),
    # Wall screens: readable by anyone (off: signed-in users, and screens with a kiosk
    # link); how often an idle wall's socket hears from the server (so it is not "stale").
    "WALLS_PUBLIC": env_bool("TRAINYARD_WALLS_PUBLIC", True),
    "WALL_HEARTBEAT_SECONDS": env_int("TRAINYARD_WALL_HEARTBEAT_SECONDS", 10),
    # How links in e-mails and chat messages start.
    "PUBLIC_URL": env_str("TRAINYARD_PUBLIC_URL", "http://127.0.0.1:8000"),
}

# Approval requests and reminders also go out by e-mail. Standalone prints them to the
# console; production sends through SMTP (EMAIL_HOST...).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend"
                        if PRODUCTION else "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "trainyard@localhost")

if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

CELERY_BEAT_SCHEDULE = {
    # Heartbeats go silent after 30 s: a 15 s round notices a dead worker within 45 s.
    "reap-stuck-runs": {"task": "pipeline.tasks.reap_stuck_runs", "schedule": 15.0},
    # Backstop: nodes are normally handed on the moment a build releases one.
    "dispatch-waiting-deploys": {"task": "pipeline.tasks.dispatch_waiting_deploys",
                                 "schedule": 15.0},
    "check-node-health": {"task": "nodes.tasks.check_node_health", "schedule": 30.0},
    "sync-pull-requests": {"task": "pipeline.tasks.sync_pull_requests", "schedule": 30.0},
    # Reminds authors who have not answered a train (TRAINYARD_APPROVAL_REMINDER).
    "remind-train-authors": {"task": "pipeline.tasks.remind_train_authors", "schedule": 60.0},
}
