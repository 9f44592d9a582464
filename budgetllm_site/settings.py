"""BudgetLLM settings: one module, configured from the environment.

Embedded defaults need nothing installed (SQLite under var/, no Redis, Celery on
kombu's filesystem broker, console email). Set DATABASE_URL and REDIS_URL for
PostgreSQL and Redis. Every variable read here is listed in `.env.example`.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from .env import env_bool, env_int, env_list, env_str, load_secret

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", True)
TESTING = env_bool("BUDGETLLM_TESTING", False)

SECRET_KEY = load_secret("SECRET_KEY", data_dir=DATA_DIR, debug=DEBUG)
# Fernet keys for the provider-key vault, comma separated: the first encrypts, all decrypt.
VAULT_KEYS = env_list("VAULT_KEYS") or [load_secret("VAULT_KEYS", data_dir=DATA_DIR, debug=DEBUG)]
# HMAC secret for bllm_ key digests; deliberately not SECRET_KEY so rotating one
# does not invalidate the other.
KEY_HASH_SECRET = load_secret("KEY_HASH_SECRET", data_dir=DATA_DIR, debug=DEBUG)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "allauth",
    "allauth.account",
    "accounts",
    "keys",
    "budgets",
    "proxy",
    "billing",
    "marketing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "budgetllm_site.urls"
ASGI_APPLICATION = "budgetllm_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.account",
                "billing.context_processors.billing_notice",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request may run on another thread: a persistent connection per
    # thread would pile up, so use psycopg's pool with CONN_MAX_AGE = 0.
    if env_bool("DATABASE_POOL", True):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 10),
            "timeout": 10,
        }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the web workers and the Celery worker read while one writes;
    # IMMEDIATE makes a write transaction take the lock up front instead of failing
    # with "database is locked" when it upgrades from a read.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests on a file, not SQLite's in-memory default: the proxy tests serve the test
    # database from a uvicorn subprocess, which must see what the test wrote, and the
    # shared-cache memory database answers concurrent writers (two workers racing for a
    # threshold alert) with "table is locked" at once instead of waiting.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Covering indexes (Index(include=...)) speed up the dashboard on PostgreSQL; SQLite
# builds them as plain indexes, which is fine for the embedded default.
SILENCED_SYSTEM_CHECKS = ["models.W040"]

# --- Redis, cache, Celery ---------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "bllm",
        }
    }
else:
    # The database cache is shared by every process of an embedded run (web workers
    # and Celery), which the rate limits need; a per-process memory cache is not.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "budgetllm_cache",
        }
    }

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = DATA_DIR / "celery-broker"
    for sub in ("out", "processed"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- Spend ledger (budgets/ledger.py) ------------------------------------------------------
# "redis" (production: one atomic Lua script per operation) or "sql" (the embedded
# default: conditional UPDATEs in one transaction).
LEDGER_BACKEND = env_str("LEDGER_BACKEND", "redis" if REDIS_URL else "sql")
LEDGER_REDIS_URL = env_str("LEDGER_REDIS_URL", REDIS_URL)
LEDGER_REDIS_PREFIX = env_str("LEDGER_REDIS_PREFIX", "bllm:ledger:")
LEDGER_REDIS_TIMEOUT_SECONDS = float(env_int("LEDGER_REDIS_TIMEOUT_MS", 2000)) / 1000
# A reservation not settled within this time (the worker died mid-request) is charged
# at its full reserved amount by the sweep task.
LEDGER_RESERVATION_TTL_SECONDS = env_int("LEDGER_RESERVATION_TTL_SECONDS", 600)
LEDGER_SWEEP_INTERVAL_SECONDS = env_int("LEDGER_SWEEP_INTERVAL_SECONDS", 30)
# How often buffered usage (Redis ledger) is written to UsageRecord rows.
LEDGER_DRAIN_INTERVAL_SECONDS = env_int("LEDGER_DRAIN_INTERVAL_SECONDS", 2)
# Counter windows Redis may forget this long after they end; run counters this long
# after their last request.
LEDGER_COUNTER_RETENTION_DAYS = env_int("LEDGER_COUNTER_RETENTION_DAYS", 90)
# How long a process may reuse an account's caps and prices without re-reading them
# (a cap change bumps a version that makes the next request re-read at once; this is
# only the backstop).
LEDGER_CONFIG_CACHE_SECONDS = env_int("LEDGER_CONFIG_CACHE_SECONDS", 60)

# Every periodic task of the product, in one place.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "accounts-delete-unused-signups": {
        "task": "accounts.delete_unused_signups",
        "schedule": crontab(hour=3, minute=47),
    },
    # Compares the spend ledger's counters with recorded usage and reports drift.
    "ledger-reconcile": {"task": "budgets.tasks.ledger_reconcile_task", "schedule": 3600.0},
    # Usage history beyond each plan's retention (7 days Free, 90 paid) goes nightly.
    "billing-usage-history-purge": {
        "task": "billing.tasks.usage_history_purge",
        "schedule": crontab(hour=3, minute=17),
    },
    # Subscriptions cancelled at period end lapse on time even if the provider's
    # webhook is late: plan_for() already answers "free", this applies the downgrade.
    "billing-subscriptions-lapse": {
        "task": "billing.tasks.subscriptions_lapse",
        "schedule": crontab(minute=7),
    },
    # Dashboard rollups: today's numbers at most a minute stale ...
    "budgets-rollup-recent": {"task": "budgets.tasks.rollup_recent", "schedule": 60.0},
    # ... and each account's previous local day closed once after its midnight (the task
    # picks the accounts whose local hour is 0, so every time zone gets its turn).
    "budgets-rollup-yesterday": {
        "task": "budgets.tasks.rollup_yesterday",
        "schedule": crontab(minute=5),
    },
    "budgets-sweep-expired-reservations": {
        "task": "budgets.tasks.sweep_expired_reservations",
        "schedule": float(LEDGER_SWEEP_INTERVAL_SECONDS),
    },
    "budgets-drain-usage": {
        "task": "budgets.tasks.drain_usage",
        "schedule": float(LEDGER_DRAIN_INTERVAL_SECONDS),
    },
}

# --- Auth and accounts ------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "landing"

ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_BY_CODE_ENABLED = True
ACCOUNT_LOGIN_BY_CODE_TIMEOUT = 15 * 60
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_SESSION_REMEMBER = True
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
# Rate limits on login mails: per IP and per normalised email (allauth keeps the
# counters in the cache, which is why the cache must be shared between processes).
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "request_login_code": (
        f"{env_str('LOGIN_MAIL_RATE_PER_IP', '20/h')}/ip,"
        f"{env_str('LOGIN_MAIL_RATE_PER_EMAIL', '5/15m')}/key"
    ),
    "confirm_login_code": "10/m/ip",
    # Team invitations mail arbitrary addresses: per inviting user, and per invited
    # address across all accounts (so nobody is flooded with invitations).
    "team_invite": (
        f"{env_str('TEAM_INVITE_RATE_PER_USER', '20/h')}/user,"
        f"{env_str('TEAM_INVITE_RATE_PER_EMAIL', '3/d')}/key"
    ),
}
# The client IP for those limits: REMOTE_ADDR, or the address this many proxies back in
# X-Forwarded-For when running behind a reverse proxy.
ALLAUTH_TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if env_bool("BEHIND_PROXY") else 0)
# Our subjects say what the mail is ("Your BudgetLLM sign-in link"); no "[site] " prefix.
ACCOUNT_EMAIL_SUBJECT_PREFIX = ""
ACCOUNT_LOGOUT_ON_GET = False
MAGIC_LINK_MAX_AGE = 15 * 60
SESAME_MAX_AGE = MAGIC_LINK_MAX_AGE
SESAME_ONE_TIME = True
SESAME_TOKEN_NAME = "token"  # noqa: S105 - the query parameter's name, not a secret
# How long a team invitation stays open. The sign-in link inside the mail still lasts
# MAGIC_LINK_MAX_AGE; after that, any sign-in as the invited address accepts it.
TEAM_INVITE_MAX_AGE_DAYS = env_int("TEAM_INVITE_MAX_AGE_DAYS", 7)

# Landing-page waitlist: at most this many sign-ups per IP per window.
WAITLIST_RATE_LIMIT = env_int("WAITLIST_RATE_LIMIT", 5)
WAITLIST_RATE_WINDOW_SECONDS = env_int("WAITLIST_RATE_WINDOW_SECONDS", 3600)

# --- Email -------------------------------------------------------------------------------
# Console by default: magic links appear in the terminal that runs `make run`.
EMAIL_BACKEND_PATH = env_str("EMAIL_BACKEND", "accounts.mail.ConsoleBackend")
_smtp_options: dict[str, object] = {}
if EMAIL_BACKEND_PATH.endswith("smtp.EmailBackend"):
    _smtp_options = {
        "host": env_str("EMAIL_HOST", "localhost"),
        "port": env_int("EMAIL_PORT", 587),
        "username": env_str("EMAIL_HOST_USER"),
        "password": env_str("EMAIL_HOST_PASSWORD"),
        "use_tls": env_bool("EMAIL_USE_TLS", True),
    }
elif EMAIL_BACKEND_PATH.endswith("filebased.EmailBackend"):
    # One file per message in a folder: the browser tests read magic links from it.
    _smtp_options = {"file_path": env_str("EMAIL_FILE_PATH", str(DATA_DIR / "mail"))}
MAILERS = {"default": {"BACKEND": EMAIL_BACKEND_PATH, "OPTIONS": _smtp_options}}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "BudgetLLM <noreply@budgetllm.local>")

# --- Provider ----------------------------------------------------------------------------
OPENAI_UPSTREAM_BASE_URL = env_str("OPENAI_UPSTREAM_BASE_URL", "https://api.openai.com/v1").rstrip(
    "/"
)

# --- Alerts and the spend-spike breaker -----------------------------------------------------
# Percentages of a cap's limit that alert when a cap does not set its own.
ALERT_THRESHOLDS_DEFAULT = [50, 80, 100]
# After a settle, alerts for an account are evaluated at most once per this many seconds
# (one Celery task covers every settle in the interval).
ALERTS_CHECK_DEBOUNCE_SECONDS = env_int("ALERTS_CHECK_DEBOUNCE_SECONDS", 5)
ALERT_DELIVERY_MAX_RETRIES = env_int("ALERT_DELIVERY_MAX_RETRIES", 6)
ALERT_WEBHOOK_TIMEOUT_SECONDS = env_int("ALERT_WEBHOOK_TIMEOUT_SECONDS", 10)
# Test-only escape hatch: origins (scheme://host:port) whose webhook URLs skip the https,
# provider-host and public-address checks so tests can post to a local server. Honoured
# only with DEBUG or BUDGETLLM_TESTING on, so a production site can never enable it.
ALERT_WEBHOOK_TEST_ORIGINS = env_list("ALERT_WEBHOOK_TEST_ORIGINS") if (DEBUG or TESTING) else []
# Pause a key when its spend in the last WINDOW seconds exceeds FLOOR micro-dollars AND
# MULTIPLIER times what its average rate over the previous BASELINE_HOURS would spend in
# the same time. Each key can override these or turn the breaker off on the alerts page.
SPIKE_BREAKER_ENABLED = env_bool("SPIKE_BREAKER_ENABLED", True)
SPIKE_BREAKER_WINDOW_SECONDS = env_int("SPIKE_BREAKER_WINDOW_SECONDS", 300)
SPIKE_BREAKER_MULTIPLIER = env_int("SPIKE_BREAKER_MULTIPLIER", 10)
SPIKE_BREAKER_FLOOR_MICROS = env_int("SPIKE_BREAKER_FLOOR_MICROS", 1_000_000)
SPIKE_BREAKER_BASELINE_HOURS = env_int("SPIKE_BREAKER_BASELINE_HOURS", 24)

# --- Operations ------------------------------------------------------------------------------
# Bearer token for /metrics; unset = /metrics answers 404.
METRICS_TOKEN = env_str("METRICS_TOKEN")
# Several worker processes aggregate their metrics through files in this folder (it must
# be empty when the server starts; bin/run-all wipes it). Unset = one-process metrics.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# Ledger counters and recorded usage may differ by this much before drift is reported
# (in-flight reservations are excluded from the comparison).
LEDGER_DRIFT_TOLERANCE_MICROS = env_int("LEDGER_DRIFT_TOLERANCE_MICROS", 0)
# --- Plans and billing ------------------------------------------------------------------
# Razorpay (India, INR). Prices are integer paise and must match the plans created in
# the Razorpay dashboard; they are shown on the billing page, Razorpay charges the plan.
RAZORPAY_KEY_ID = env_str("RAZORPAY_KEY_ID")
RAZORPAY_KEY_SECRET = env_str("RAZORPAY_KEY_SECRET")
# The secret typed into the Razorpay dashboard's webhook form: NOT the API key secret.
RAZORPAY_WEBHOOK_SECRET = env_str("RAZORPAY_WEBHOOK_SECRET")
RAZORPAY_PLAN_PRO = env_str("RAZORPAY_PLAN_PRO")
RAZORPAY_PLAN_TEAM = env_str("RAZORPAY_PLAN_TEAM")
RAZORPAY_PRICE_PRO_PAISE = env_int("RAZORPAY_PRICE_PRO_PAISE", 159_900)
RAZORPAY_PRICE_TEAM_PAISE = env_int("RAZORPAY_PRICE_TEAM_PAISE", 409_900)
# Billing cycles a Razorpay subscription runs for before it completes (120 = 10 years).
RAZORPAY_TOTAL_COUNT = env_int("RAZORPAY_TOTAL_COUNT", 120)
# LemonSqueezy (international, USD). Variant ids are the numeric ids webhooks carry.
LEMONSQUEEZY_STORE_URL = env_str("LEMONSQUEEZY_STORE_URL").rstrip("/")
LEMONSQUEEZY_VARIANT_PRO = env_str("LEMONSQUEEZY_VARIANT_PRO")
LEMONSQUEEZY_VARIANT_TEAM = env_str("LEMONSQUEEZY_VARIANT_TEAM")
LEMONSQUEEZY_WEBHOOK_SECRET = env_str("LEMONSQUEEZY_WEBHOOK_SECRET")
LEMONSQUEEZY_PRICE_PRO_CENTS = env_int("LEMONSQUEEZY_PRICE_PRO_CENTS", 1_900)
LEMONSQUEEZY_PRICE_TEAM_CENTS = env_int("LEMONSQUEEZY_PRICE_TEAM_CENTS", 4_900)
# Development/test stand-in for both checkouts: no call leaves the machine and a
# stand-in widget posts the same signed result to the same server path.
BILLING_CHECKOUT_STANDIN = env_bool("BILLING_CHECKOUT_STANDIN", False)
if BILLING_CHECKOUT_STANDIN and not DEBUG:
    # The stand-in signs "payments" with a test secret: in production it would hand
    # out paid plans for free.
    raise ImproperlyConfigured("BILLING_CHECKOUT_STANDIN=true is refused when DEBUG is off.")
if BILLING_CHECKOUT_STANDIN:
    # Fixed test credentials so the stand-in signs exactly what Razorpay would.
    RAZORPAY_KEY_ID = RAZORPAY_KEY_ID or "rzp_test_standin"
    RAZORPAY_KEY_SECRET = RAZORPAY_KEY_SECRET or "standin_key_secret"  # noqa: S105
    RAZORPAY_WEBHOOK_SECRET = RAZORPAY_WEBHOOK_SECRET or "standin_webhook_secret"  # noqa: S105
    RAZORPAY_PLAN_PRO = RAZORPAY_PLAN_PRO or "plan_StandinPro0001"
    RAZORPAY_PLAN_TEAM = RAZORPAY_PLAN_TEAM or "plan_StandinTeam001"
    LEMONSQUEEZY_VARIANT_PRO = LEMONSQUEEZY_VARIANT_PRO or "111111"
    LEMONSQUEEZY_VARIANT_TEAM = LEMONSQUEEZY_VARIANT_TEAM or "222222"
    LEMONSQUEEZY_WEBHOOK_SECRET = LEMONSQUEEZY_WEBHOOK_SECRET or "standin_ls_secret"  # noqa: S105
# --- The /v1 proxy ------------------------------------------------------------------------
# Largest request body accepted (413 above it). Images inside count at the ceiling below.
PROXY_MAX_BODY_BYTES = env_int("PROXY_MAX_BODY_BYTES", 16 * 1024 * 1024)
# Embeddings take at most 300k tokens a request at the provider (~2 MB of token ids or
# escaped text): a larger body only costs the event loop its parse (a 16 MB array of
# tiny items held a worker's loop ~2.5 s), for an answer that is a refusal anyway.
PROXY_MAX_EMBEDDINGS_BODY_BYTES = env_int("PROXY_MAX_EMBEDDINGS_BODY_BYTES", 4 * 1024 * 1024)
# Tokens reserved per image part: above what any current OpenAI model bills for one image.
PROXY_IMAGE_TOKEN_CEILING = env_int("PROXY_IMAGE_TOKEN_CEILING", 6000)
# How long a worker reuses a resolved bllm_ key before reading it again: revoking or
# pausing a key takes effect on every worker within this many seconds (0 = every request).
PROXY_KEY_CACHE_SECONDS = env_int("PROXY_KEY_CACHE_SECONDS", 2)
PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS = env_int("PROXY_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10)
# Longest silence allowed from the provider (before the answer, or between stream events).
PROXY_UPSTREAM_READ_TIMEOUT_SECONDS = env_int("PROXY_UPSTREAM_READ_TIMEOUT_SECONDS", 600)
PROXY_UPSTREAM_MAX_CONNECTIONS = env_int("PROXY_UPSTREAM_MAX_CONNECTIONS", 256)
# Most requests one account may have on their way to the provider, per worker (beyond:
# 429): a quarter of the pool by default, so no single account can take all of it.
PROXY_MAX_IN_FLIGHT_PER_ACCOUNT = env_int(
    "PROXY_MAX_IN_FLIGHT_PER_ACCOUNT", max(1, PROXY_UPSTREAM_MAX_CONNECTIONS // 4)
)
# Longest a stream waits for its client to take more of it (the client is connected but
# reads nothing): then the stream ends and frees its provider connection for others.
PROXY_CLIENT_SEND_TIMEOUT_SECONDS = env_int("PROXY_CLIENT_SEND_TIMEOUT_SECONDS", 60)
# How long identical in-flight requests wait for the first one's answer before going
# upstream themselves.
# At least 1: the in-flight lock lives this long, and Redis refuses a lock of 0 ms (which
# made every lookup fail as if the cache were down).
PROXY_CACHE_WAIT_SECONDS = env_int("PROXY_CACHE_WAIT_SECONDS", 120, minimum=1)
# Extra request headers passed on to the provider (besides OpenAI-Organization/-Project/
# -Beta), comma separated; e.g. an OpenAI-compatible upstream's own headers.
PROXY_FORWARD_HEADERS = env_list("PROXY_FORWARD_HEADERS")

# --- i18n, static ------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
SERVE_STATIC = env_bool("SERVE_STATIC", True)

# --- Security ----------------------------------------------------------------------------
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.SELF],
    "object-src": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY") else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
# Health checks are probed over plain HTTP by load balancers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# "json" writes every log record as one JSON object per line; "plain" is for a terminal.
# The per-request log (logger "budgetllm.requests") is always JSON lines.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "proxy.reqlog.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
        },
        # Written in batches from the event loop (see BatchedLineHandler).
        "requests": {"class": "proxy.reqlog.BatchedLineHandler", "formatter": "json"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "budgetllm.requests": {"handlers": ["requests"], "level": "INFO", "propagate": False},
    },
}
