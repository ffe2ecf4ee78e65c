"""Settings for the exchange: every value comes from the environment, read here and only here.

Required: DATABASE_URL, REDIS_URL (the launcher sets both, starting embedded servers when they
are absent; a command run beside `make run` takes those from var/embedded-servers.json).
Optional: SECRET_KEY (a dev key is generated into var/ when absent), DEBUG, ALLOWED_HOSTS, HTTPS,
MATCHING_SHARDS, REDIS_KEY_PREFIX, LOG_LEVEL, VAR_DIR. The README lists them.
"""

import json
import math
import os
import secrets
import socket
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from exchange.embedded_servers import EMBEDDED_SERVERS_FILE

BASE_DIR = Path(__file__).resolve().parent.parent


class StrictEnv(environ.Env):
    """django-environ, reading each variable as written, or stopping the start with one line
    that names it (manage.py and the launcher print ImproperlyConfigured that way).

    django-environ had read any word but true/on/ok/y/yes/1 as false (HTTPS=ture served
    cookies over plain HTTP, RATE_LIMIT_ENABLED=enabled turned the limits off), raised a bare
    ValueError traceback for MATCHING_SHARDS=abc, kept the space of ALLOWED_HOSTS="a, b" (a
    host no request names), and read a value starting with `$` as the name of another
    variable (a SECRET_KEY from Django's generator, whose alphabet has `$`, became the
    generated development key). An empty value is the default, as if unset.
    """

    TRUE_WORDS = ("true", "on", "ok", "yes", "y", "1")
    FALSE_WORDS = ("false", "off", "no", "n", "0")

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        raw = self.ENVIRON.get(var)
        if raw is None or not raw.strip():
            if default is self.NOTSET:
                raise ImproperlyConfigured(f"{var} is not set")
            return self.parse_value(default, cast) if parse_default else default
        if cast is bool:
            word = raw.strip().lower()
            if word in self.TRUE_WORDS or word in self.FALSE_WORDS:
                return word in self.TRUE_WORDS
            raise ImproperlyConfigured(f"{var} must be true or false (or 1/0, yes/no), got {raw!r}")
        if cast is list or isinstance(cast, list):
            return [item.strip() for item in raw.split(",") if item.strip()]
        if cast is None and isinstance(default, str):
            cast = str
        try:
            if cast is float:  # environ's own kept digits only: "500ms" read as 500, "1e3" as 13
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError(raw)
                return value
            return self.parse_value(raw.strip() if cast is int else raw, cast)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(cast, "valid")
            raise ImproperlyConfigured(f"{var} must be {kind}, got {raw!r}") from None


env = StrictEnv()


def _require(name: str, value: object, valid: bool, rule: str, harm: str) -> None:
    """Stop the start when `value` of `name` breaks `rule`, saying what it would have done:
    such values had been taken as given and failed later, deep in a request or a process
    (every API request hung with API_VIEW_THREADS=0, every connection failed with
    DB_LOCK_TIMEOUT_MS=-1, every shard read down with MATCHING_HEARTBEAT_TTL_MS=0)."""
    if not valid:
        raise ImproperlyConfigured(f"{name} must be {rule}, got {value}: {harm}")


# Local state of a development run (dev secret key, embedded servers' data, logs).
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var")))


def _dev_secret_key(var_dir: Path) -> str:
    """Return the development secret key kept in var/, generating it on first use."""
    key_file = var_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def _embedded_server_urls(var_dir: Path) -> dict:
    """The URLs of the embedded servers a running `make run` started, which it writes to
    var/embedded-servers.json while they run: a `manage.py` command run beside it
    (demo_totp_code, ledger_verify, ...) had failed with "DATABASE_URL is not set"."""
    try:
        urls = json.loads((var_dir / EMBEDDED_SERVERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return urls if isinstance(urls, dict) else {}


def _required_url(name: str, example: str) -> str:
    value = env.str(name, default="") or _embedded_server_urls(VAR_DIR).get(name, "")
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set: run through `make run` / `make test` (they start embedded "
            f"servers), or set {name}, e.g. {name}={example}"
        )
    return value


# Whether SECRET_KEY is the development key generated into var/ (`check --deploy` warns).
SECRET_KEY_GENERATED = not env.str("SECRET_KEY", default="")
SECRET_KEY = env.str("SECRET_KEY", default="") or _dev_secret_key(VAR_DIR)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A form refused for its CSRF token gets the site's page saying what to do (exchange/web_views.py).
CSRF_FAILURE_VIEW = "exchange.web_views.csrf_failure"
# Served over HTTPS by a TLS-terminating proxy in front, which must set X-Forwarded-Proto (and
# strip a client's own): the session and CSRF cookies go over TLS only, browsers are told to
# use HTTPS alone for a year (HSTS), and a plain-HTTP request is redirected to HTTPS, except
# /healthz (probes from inside). Off for `make run` (plain HTTP on localhost).
HTTPS = env.bool("HTTPS", default=False)
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = 365 * 24 * 3600

DATABASE_URL = _required_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/exchange")
REDIS_URL = _required_url("REDIS_URL", "redis://127.0.0.1:6379/0")
if not DATABASE_URL.startswith(("postgres://", "postgresql://")):
    raise ImproperlyConfigured(
        f"DATABASE_URL must be a PostgreSQL URL (postgres://user@host:port/dbname), "
        f"got scheme {DATABASE_URL.split(':', 1)[0]!r}"
    )
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(
        f"REDIS_URL must be a Redis URL (redis://host:port/db), "
        f"got scheme {REDIS_URL.split(':', 1)[0]!r}"
    )


def _redis_database(url: str) -> str:
    """The database number of a Redis URL ("" when it names none: 0). redis-py ignores a path
    that is not a number (redis://host:6379/1O used database 0, another deployment's, while
    Celery refused it), so such a URL is refused here."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    number = query["db"][0] if "db" in query else ""
    if parts.scheme != "unix":
        path = parts.path.strip("/")
        if number and path and path != number:
            raise ImproperlyConfigured(
                f"REDIS_URL names two databases, /{path} and ?db={number}: keep one"
            )
        number = number or path
    if number and not number.isdigit():
        raise ImproperlyConfigured(
            f"REDIS_URL's database must be a number (redis://host:port/0), got {number!r}"
        )
    return number


def _celery_broker_url(url: str) -> str:
    """REDIS_URL as Celery's transport (kombu) takes it: it has no unix:// transport (worker
    and beat had stopped at start with "No such transport: unix"), its socket form is
    redis+socket:// with the database as virtual_host; and rediss:// checks the certificate."""
    parts = urlsplit(url)
    if parts.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query):
        # kombu's default for rediss:// is not to check the server's certificate (it logs a
        # warning); redis-py's, as the web and the matching worker connect, is to check it.
        return urlunsplit(
            parts._replace(query="&".join(filter(None, [parts.query, "ssl_cert_reqs=required"])))
        )
    if parts.scheme != "unix":
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
    query.append(("virtual_host", _redis_database(url) or "0"))
    return f"redis+socket://{parts.netloc}{parts.path}?{urlencode(query)}"


def _url_port_read(name: str, url: str) -> None:
    """A port that is not one (host:notaport, host:99999, an unclosed [IPv6) stopped manage.py
    with a bare ValueError traceback, and for Redis only at its first use: /healthz and every
    request touching Redis answered 500."""
    try:
        for netloc in urlsplit(url).netloc.rpartition("@")[2].split(","):  # libpq: h1:1,h2:2
            urlsplit(f"//{netloc}").port  # noqa: B018 (reading it is the check)
    except ValueError:
        # Not urllib's message: with a `/` in the password it quotes part of the password.
        raise ImproperlyConfigured(
            f"{name} has no valid host and port (a port that is not a number from 1 to 65535? "
            "an unencoded / @ : or # in the password? percent-encode them: %2F %40 %3A %23)"
        ) from None


_url_port_read("DATABASE_URL", DATABASE_URL)
_url_port_read("REDIS_URL", REDIS_URL)
_redis_database(REDIS_URL)

# Prefix of every Redis key this deployment writes; tests use one per run.
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="ex:")
MATCHING_SHARDS = env.int("MATCHING_SHARDS", default=1)
if MATCHING_SHARDS < 1:
    raise ImproperlyConfigured(f"MATCHING_SHARDS must be at least 1, got {MATCHING_SHARDS}")
# A shard whose heartbeat is older than this is reported down by /healthz.
MATCHING_HEARTBEAT_TTL_MS = env.int("MATCHING_HEARTBEAT_TTL_MS", default=5000)
_require(
    "MATCHING_HEARTBEAT_TTL_MS",
    MATCHING_HEARTBEAT_TTL_MS,
    MATCHING_HEARTBEAT_TTL_MS >= 2000,
    "2000 or more",
    "a worker writes its heartbeat every second; one that expires before the next (Redis "
    "refuses 0) read the shard down by turns, and the worker, finding it gone, wrote every "
    "book's snapshot again at each beat",
)
# A standby fences a shard's holder whose lease session has been idle this long (the holder
# touches it every second from a thread, so only a hung process goes quiet): it terminates the
# holder's database sessions and takes the shard. 0 turns fencing off. Keep it well above the
# longest pause a live worker can have (a garbage collection, a swap storm).
MATCHING_LEASE_STALE_SECONDS = env.float("MATCHING_LEASE_STALE_SECONDS", default=10.0)
if MATCHING_LEASE_STALE_SECONDS < 0:
    raise ImproperlyConfigured(
        f"MATCHING_LEASE_STALE_SECONDS must be 0 or more, got {MATCHING_LEASE_STALE_SECONDS}"
    )
# How long an order request waits for the engine before answering 202 pending_new.
ORDER_REPLY_TIMEOUT_SECONDS = env.float("ORDER_REPLY_TIMEOUT_SECONDS", default=2.0)
_require(
    "ORDER_REPLY_TIMEOUT_SECONDS",
    ORDER_REPLY_TIMEOUT_SECONDS,
    0 <= ORDER_REPLY_TIMEOUT_SECONDS < float("inf"),
    "0 or more",
    "it is how long an order request waits for the engine",
)
# How far ahead a GTD order's expire_at may be (ExpireAtTooFar beyond). The engine's clock is
# nanoseconds in 64 bits where it is stored (it ends in April 2262): at most 200 years.
GTD_MAX_DAYS = env.int("GTD_MAX_DAYS", default=365)
if not 1 <= GTD_MAX_DAYS <= 73_000:
    raise ImproperlyConfigured(f"GTD_MAX_DAYS must be from 1 to 73000, got {GTD_MAX_DAYS}")
# Orders arriving together at one web process are stored in one transaction
# (exchange/order_batcher.py), at most this many; ORDER_ENTRY_BATCHING=false stores each alone.
ORDER_ENTRY_BATCHING = env.bool("ORDER_ENTRY_BATCHING", default=True)
ORDER_ENTRY_BATCH_MAX = env.int("ORDER_ENTRY_BATCH_MAX", default=200)
# Threads storing batches side by side (each with its own database connection).
ORDER_ENTRY_BATCH_THREADS = env.int("ORDER_ENTRY_BATCH_THREADS", default=2)
# Threads of each web process that run the sync API views (exchange/view_threads.py).
API_VIEW_THREADS = env.int("API_VIEW_THREADS", default=32)
for _name, _threads in [
    ("ORDER_ENTRY_BATCH_THREADS", ORDER_ENTRY_BATCH_THREADS),
    ("API_VIEW_THREADS", API_VIEW_THREADS),
]:
    _require(_name, _threads, _threads >= 1, "1 or more", "with none, requests would wait forever")

# Seconds between reports of a web process's garbage collections to stderr (a diagnostic; 0:
# none). exchange/gc_tuning.py had read it from the environment itself: GC_PAUSE_REPORT=abc
# stopped the web process with a bare ValueError, and 0 printed reports without pause.
GC_PAUSE_REPORT = env.float("GC_PAUSE_REPORT", default=0.0)
_require("GC_PAUSE_REPORT", GC_PAUSE_REPORT, GC_PAUSE_REPORT >= 0, "0 or more", "it is a period")

# WebSocket streaming (/ws/v1, docs/websocket.md): per-connection limits and liveness.
WS_MAX_SUBSCRIPTIONS = env.int("WS_MAX_SUBSCRIPTIONS", default=50)
# Open sockets per client address in one web process (0 or less: no limit); one more is closed
# (4030).
WS_MAX_CONNECTIONS_PER_IP = env.int("WS_MAX_CONNECTIONS_PER_IP", default=100)
# Ops per connection and second (a token bucket). As many as an API key's REST requests
# (RATE_LIMIT_REQUESTS_KEY_PER_SECOND): at 50 the socket, the low-overhead path for algorithmic
# clients, admitted half the orders a key may send over REST. Order ops also count against the
# key's and user's order and request limits, as over REST.
WS_MAX_MESSAGES_PER_SECOND = env.int("WS_MAX_MESSAGES_PER_SECOND", default=200)
# Messages refused for the rate limit before the socket is closed (close code 4029).
WS_ABUSE_CLOSE_AFTER = env.int("WS_ABUSE_CLOSE_AFTER", default=20)
# Frames queued per connection, and their bytes; a connection past either is dropped to fresh
# snapshots (closed, 4008, when the answers to its ops alone reach it).
WS_QUEUE_SIZE = env.int("WS_QUEUE_SIZE", default=2000)
WS_QUEUE_BYTES = env.int("WS_QUEUE_BYTES", default=8 * 1024 * 1024)
WS_HEARTBEAT_SECONDS = env.float("WS_HEARTBEAT_SECONDS", default=1.0)
WS_PING_INTERVAL_SECONDS = env.float("WS_PING_INTERVAL_SECONDS", default=10.0)
# A connection that sends nothing (not even a pong) this long is closed (close code 4000).
WS_PING_TIMEOUT_SECONDS = env.float("WS_PING_TIMEOUT_SECONDS", default=30.0)
for _name, _value in [
    ("WS_QUEUE_SIZE", WS_QUEUE_SIZE),
    ("WS_QUEUE_BYTES", WS_QUEUE_BYTES),
    ("WS_HEARTBEAT_SECONDS", WS_HEARTBEAT_SECONDS),
    ("WS_PING_INTERVAL_SECONDS", WS_PING_INTERVAL_SECONDS),
    ("WS_PING_TIMEOUT_SECONDS", WS_PING_TIMEOUT_SECONDS),
]:
    _require(
        _name,
        _value,
        0 < _value < float("inf"),
        "more than 0",
        "a socket's queue would be unbounded, its timer would spin, or it would close at once",
    )

# API keys (accounts/api_keys.py): the secrets are kept encrypted with a key derived (HKDF) from
# API_KEY_ENCRYPTION_KEY, or from SECRET_KEY when it is empty (changing it makes every stored
# secret unreadable: the keys must then be re-issued). last_used_at is refreshed at most once
# per interval per key, not on every request.
API_KEY_ENCRYPTION_KEY = env.str("API_KEY_ENCRYPTION_KEY", default="")
API_KEY_LAST_USED_INTERVAL_SECONDS = env.int("API_KEY_LAST_USED_INTERVAL_SECONDS", default=60)

# Rate limits (accounts/rate_limits.py): fixed 1 s and 1 min windows of request weight, counted
# in Redis per API key and per user, one budget for order entry and one for every other request.
RATE_LIMIT_ENABLED = env.bool("RATE_LIMIT_ENABLED", default=True)
RATE_LIMITS = {
    ("orders", "key", "1s"): env.int("RATE_LIMIT_ORDERS_KEY_PER_SECOND", default=100),
    ("orders", "key", "1m"): env.int("RATE_LIMIT_ORDERS_KEY_PER_MINUTE", default=6000),
    ("orders", "user", "1s"): env.int("RATE_LIMIT_ORDERS_USER_PER_SECOND", default=200),
    ("orders", "user", "1m"): env.int("RATE_LIMIT_ORDERS_USER_PER_MINUTE", default=12000),
    ("requests", "key", "1s"): env.int("RATE_LIMIT_REQUESTS_KEY_PER_SECOND", default=200),
    ("requests", "key", "1m"): env.int("RATE_LIMIT_REQUESTS_KEY_PER_MINUTE", default=12000),
    ("requests", "user", "1s"): env.int("RATE_LIMIT_REQUESTS_USER_PER_SECOND", default=400),
    ("requests", "user", "1m"): env.int("RATE_LIMIT_REQUESTS_USER_PER_MINUTE", default=24000),
    # Requests without credentials (public market data), per client IP.
    ("requests", "ip", "1s"): env.int("RATE_LIMIT_REQUESTS_IP_PER_SECOND", default=300),
    ("requests", "ip", "1m"): env.int("RATE_LIMIT_REQUESTS_IP_PER_MINUTE", default=12000),
    # Refused API-key signatures per client IP (each one is audited); past it, 429 unaudited.
    ("auth_failures", "ip", "1m"): env.int("RATE_LIMIT_AUTH_FAILURES_IP_PER_MINUTE", default=60),
}

INSTALLED_APPS = [
    # The admin site asks staff for a verified two-factor session (accounts/admin_site.py).
    "accounts.admin_apps.TwoFactorAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "exchange.apps.ExchangeConfig",
    "accounts",
    "kyc",
    "risk",
    "audit",
    "matching",
]

# Django's own middleware, called without a thread hop per hook (see exchange/middleware.py).
MIDDLEWARE = [
    "exchange.middleware.NulCharacterGuard",
    "exchange.middleware.UnsizedBodyGuard",
    "exchange.middleware.SecurityMiddleware",
    "exchange.middleware.ContentSecurityPolicyMiddleware",
    "exchange.middleware.SessionMiddleware",
    "exchange.middleware.CommonMiddleware",
    "exchange.middleware.CsrfViewMiddleware",
    "exchange.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "exchange.middleware.MessageMiddleware",
    "exchange.middleware.XFrameOptionsMiddleware",
    "exchange.middleware.UsedWeightHeadersMiddleware",
    "exchange.middleware.PrivateApiNoStore",
]
# Django's deploy checks for the security, clickjacking and CSRF middleware match its class
# paths by name and so warned about the subclasses above; exchange/checks.py checks by class.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "exchange.urls"
ASGI_APPLICATION = "exchange.asgi.application"
WSGI_APPLICATION = "exchange.wsgi.application"

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
                "accounts.context_processors.sign_in_state",
            ],
        },
    },
]

DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if "%" in DATABASES["default"]["HOST"]:
    # libpq's form of a socket directory, postgres://user@%2Fvar%2Frun%2Fpostgresql/dbname,
    # which the launcher's check reads: django-environ kept it encoded (and lowercased), and
    # every connection failed after the pool's timeout.
    DATABASES["default"]["HOST"] = unquote(
        urlsplit(DATABASE_URL).netloc.rpartition("@")[2].partition(":")[0]
    )
# Under ASGI each request runs in a thread of its own, so per-thread persistent connections
# would mean a new connection per request: a connection pool per process instead
# (DB_POOL_MAX_SIZE=0 turns pooling off, e.g. behind PgBouncer).
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=20)
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env.int(
    "DB_CONNECT_TIMEOUT", default=3
)
# How long a statement waits for a lock before it fails (55P03, answered 503 by the API): a
# matching worker stopped mid-batch (SIGSTOP, a hung host) holds its users' ledger locks, and
# order entry waited behind it without end. 0 waits forever.
DB_LOCK_TIMEOUT_MS = env.int("DB_LOCK_TIMEOUT_MS", default=5000)
# A session idle inside a transaction this long is ended by PostgreSQL, rolling back and
# releasing its locks: a web process stopped mid-transaction (SIGSTOP, a hung host) held the
# order entry's command-order lock, and every process's order entry waited on it without end.
# 0 never ends one.
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env.int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=15000)
# PostgreSQL's timer does not cover a session `active` but waiting for its client inside a
# statement (a COPY ... FROM STDIN, a pipeline, cut off by a stopped process): Celery's
# watchdog ends this deployment's sessions waiting so for as long (exchange/stalled_sessions.py).
DATABASE_SESSION_PREFIX = "exchange:"
DB_POOL_TIMEOUT = env.float("DB_POOL_TIMEOUT", default=10.0)
for _name, _value in [
    ("DB_POOL_MAX_SIZE", DB_POOL_MAX_SIZE),
    ("DB_LOCK_TIMEOUT_MS", DB_LOCK_TIMEOUT_MS),
    ("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", DB_IDLE_IN_TRANSACTION_TIMEOUT_MS),
]:
    _require(_name, _value, _value >= 0, "0 or more", "no database connection could be made")
_require(
    "DB_POOL_TIMEOUT",
    DB_POOL_TIMEOUT,
    0 < DB_POOL_TIMEOUT < float("inf"),
    "more than 0",
    "no request would get a connection",
)
_session_options = []
if DB_LOCK_TIMEOUT_MS:
    _session_options.append(f"-c lock_timeout={DB_LOCK_TIMEOUT_MS}")
if DB_IDLE_IN_TRANSACTION_TIMEOUT_MS:
    _session_options.append(
        f"-c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
# The URL's own session options (?options=-c%20search_path%3Dexchange, a managed server's
# ?options=endpoint%3D...): the timeouts below had replaced them.
DATABASE_URL_OPTIONS = str(DATABASES["default"]["OPTIONS"].get("options") or "")
if _session_options:
    DATABASES["default"]["OPTIONS"]["options"] = " ".join(
        [DATABASE_URL_OPTIONS] * bool(DATABASE_URL_OPTIONS) + _session_options
    )
# Every session of the deployment carries its process's name (unless PGAPPNAME names it): how
# the stalled-session watchdog (exchange/stalled_sessions.py) tells its own sessions from
# others of the server (the matching worker renames its own `exchange-matching:...`).
DATABASES["default"]["OPTIONS"]["fallback_application_name"] = (
    f"{DATABASE_SESSION_PREFIX}{os.getpid()}@{socket.gethostname()}"[:63]
)
# The watchdog's period: a third of the idle-in-transaction limit, between 1 and 5 seconds.
DB_STALLED_SESSION_CHECK_SECONDS = max(1.0, min(5.0, DB_IDLE_IN_TRANSACTION_TIMEOUT_MS / 3000))
# psycopg's default: a statement run this many times on a connection is prepared there.
DB_PREPARE_THRESHOLD = 5
if DB_POOL_MAX_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": DB_POOL_TIMEOUT,
    }
    # Statements run with server-side binding (the worker's polls, the order path's raw
    # reads) are prepared on a connection once they ran there DB_PREPARE_THRESHOLD times
    # (Django turns preparing off for PgBouncer's sake; behind PgBouncer the pool is off too).
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = DB_PREPARE_THRESHOLD
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Web sign-in (accounts/): email + password, then the TOTP step for users with a device.
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
# Failed logins and failed one-time codes allowed per account and per client IP over a sliding
# window of LOGIN_THROTTLE_WINDOW_SECONDS (accounts/login_throttle.py); past either, sign-in
# answers 429.
LOGIN_THROTTLE_ACCOUNT_FAILURES = env.int("LOGIN_THROTTLE_ACCOUNT_FAILURES", default=5)
LOGIN_THROTTLE_IP_FAILURES = env.int("LOGIN_THROTTLE_IP_FAILURES", default=20)
LOGIN_THROTTLE_WINDOW_SECONDS = env.int("LOGIN_THROTTLE_WINDOW_SECONDS", default=900)
_require(
    "LOGIN_THROTTLE_WINDOW_SECONDS",
    LOGIN_THROTTLE_WINDOW_SECONDS,
    LOGIN_THROTTLE_WINDOW_SECONDS >= 1,
    "1 or more",
    "every sign-in would divide by it",
)
# Issuer shown by authenticator apps. django-otp's own per-device back-off is off: the
# per-account and per-IP counters above cover one-time codes too (and take an injected clock).
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="Exchange")
OTP_TOTP_THROTTLE_FACTOR = 0
OTP_STATIC_THROTTLE_FACTOR = 0

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(VAR_DIR / "static"))
# Our own CSS and JavaScript (static/), and the chart library from npm (package-lock.json,
# installed into node_modules by `make`), served as static/vendor/lightweight-charts/.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/lightweight-charts", BASE_DIR / "node_modules" / "lightweight-charts" / "dist"),
]

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX + "cache",
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": REDIS_KEY_PREFIX + "asgi"},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Signed API-key requests first (accounts/api_key_auth.py): a request without the
        # X-API-KEY header falls through to the web session (CSRF applies there).
        "accounts.api_key_auth.ApiKeyAuthentication",
        "accounts.authentication.VerifiedSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "accounts.api_key_auth.ApiKeyPermission",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["accounts.rate_limits.ApiRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bodies only: a form body took the last of a repeated field (quantity=1&quantity=3
    # placed 3), where JSON refuses a key twice. Another content type is 415.
    "DEFAULT_PARSER_CLASSES": ["exchange.parsers.JsonBodyParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "exchange.content_negotiation.JsonContentNegotiation",
    "EXCEPTION_HANDLER": "exchange.api_errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "exchange.pagination.CursorPage",
    "PAGE_SIZE": 100,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Exchange API",
    "DESCRIPTION": "Order entry, market data and account API of the exchange.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "exchange.openapi.common_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "StpModeEnum": "exchange.models.StpMode",
        "OrderStatusEnum": "exchange.models.Order.Status",
        "TickerStatusEnum": "exchange.selectors.TICKER_STATUSES",
        "HealthStatusEnum": "exchange.health.HEALTH_STATUSES",
    },
}

CELERY_BROKER_URL = _celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": REDIS_KEY_PREFIX + "celery:"}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Fee tiers (accounts/fee_tiers.py): rates cached per process on the order path; how often users
# whose volume moved are re-assessed, and how far before their last assessment a volume change
# still counts (a worker batch stamps its rows before it commits).
FEE_RATES_CACHE_SECONDS = env.float("FEE_RATES_CACHE_SECONDS", default=5.0)
FEE_TIER_REFRESH_SECONDS = env.float("FEE_TIER_REFRESH_SECONDS", default=60.0)
FEE_TIER_REFRESH_MARGIN_SECONDS = env.float("FEE_TIER_REFRESH_MARGIN_SECONDS", default=60.0)
# Quote presence (accounts/quote_presence.py): sampling period, and how far from the mid (basis
# points) a bid and an ask may be for a market maker to count as present.
QUOTE_PRESENCE_SAMPLE_SECONDS = env.float("QUOTE_PRESENCE_SAMPLE_SECONDS", default=10.0)
QUOTE_PRESENCE_MAX_DISTANCE_BPS = env.int("QUOTE_PRESENCE_MAX_DISTANCE_BPS", default=100)

# /healthz reports the scheduler down when no scheduled task has run for this long (its
# heartbeat task runs every SCHEDULER_HEARTBEAT_SECONDS).
SCHEDULER_HEARTBEAT_SECONDS = env.float("SCHEDULER_HEARTBEAT_SECONDS", default=5.0)
SCHEDULER_HEARTBEAT_TTL_SECONDS = env.float("SCHEDULER_HEARTBEAT_TTL_SECONDS", default=30.0)
for _name, _value in [
    ("SCHEDULER_HEARTBEAT_SECONDS", SCHEDULER_HEARTBEAT_SECONDS),
    ("SCHEDULER_HEARTBEAT_TTL_SECONDS", SCHEDULER_HEARTBEAT_TTL_SECONDS),
    ("FEE_TIER_REFRESH_SECONDS", FEE_TIER_REFRESH_SECONDS),
    ("QUOTE_PRESENCE_SAMPLE_SECONDS", QUOTE_PRESENCE_SAMPLE_SECONDS),
]:
    _require(
        _name,
        _value,
        1 <= _value * 1000 < float("inf"),  # the heartbeat's expiry is whole milliseconds
        "0.001 or more",
        "a schedule would spin, or Redis would refuse the scheduler's heartbeat",
    )
_require(
    "SCHEDULER_HEARTBEAT_TTL_SECONDS",
    SCHEDULER_HEARTBEAT_TTL_SECONDS,
    SCHEDULER_HEARTBEAT_TTL_SECONDS >= 2 * SCHEDULER_HEARTBEAT_SECONDS,
    f"at least twice SCHEDULER_HEARTBEAT_SECONDS ({SCHEDULER_HEARTBEAT_SECONDS:g})",
    "the heartbeat would expire between runs, and /healthz read the scheduler down by turns",
)

# /healthz reports a live shard degraded once its oldest unapplied command has waited this long
# (its worker is behind: orders are accepted but answered 202 pending_new, and not matched yet).
HEALTH_BACKLOG_SECONDS = env.float("HEALTH_BACKLOG_SECONDS", default=5.0)
_require(
    "HEALTH_BACKLOG_SECONDS",
    HEALTH_BACKLOG_SECONDS,
    0 < HEALTH_BACKLOG_SECONDS < float("inf"),
    "more than 0",
    "every shard would read behind at each command",
)

CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The tasks that run every few seconds expire unrun after a few: with the worker down, beat
# would queue thousands that it must then work through, all for nothing.
_EXPIRE_UNRUN = {"expire_seconds": 10}  # django-celery-beat's name for `expires`
CELERY_BEAT_SCHEDULE: dict = {
    # Audit trail: seal every second; partitions, export and retention daily (UTC).
    "audit-seal": {
        "task": "audit.tasks.audit_seal_task",
        "schedule": 1.0,
        "options": _EXPIRE_UNRUN,
    },
    # Matching: GTD/DAY expiry, every second an expire_due command to each shard with orders due.
    "matching-expire-due": {
        "task": "matching.tasks.expire_due_task",
        "schedule": 1.0,
        "options": _EXPIRE_UNRUN,
    },
    # Sessions of this deployment stopped mid-statement, waiting for their client inside a
    # transaction past DB_IDLE_IN_TRANSACTION_TIMEOUT_MS, are ended (their locks let go).
    "exchange-stalled-sessions-end": {
        "task": "exchange.tasks.stalled_sessions_end_task",
        "schedule": DB_STALLED_SESSION_CHECK_SECONDS,
        "options": _EXPIRE_UNRUN,
    },
    # /healthz: proof that beat schedules and a worker runs what it schedules.
    "exchange-scheduler-heartbeat": {
        "task": "exchange.tasks.scheduler_heartbeat_task",
        "schedule": SCHEDULER_HEARTBEAT_SECONDS,
        "options": _EXPIRE_UNRUN,
    },
    "audit-partitions": {
        "task": "audit.tasks.audit_partitions_task",
        "schedule": crontab(minute=5, hour="*/6"),
    },
    "audit-export": {
        "task": "audit.tasks.audit_export_task",
        "schedule": crontab(minute=15, hour=0),
    },
    "audit-retention": {
        "task": "audit.tasks.audit_retention_task",
        "schedule": crontab(minute=45, hour=1),
    },
    # Fee tiers: volumes recomputed from the trades and every user re-assessed nightly (UTC);
    # users whose volume moved re-assessed every minute; quote presence sampled every 10 s.
    "accounts-fee-tiers-nightly": {
        "task": "accounts.tasks.fee_tiers_nightly_task",
        "schedule": crontab(minute=10, hour=0),
    },
    "accounts-fee-tiers-refresh": {
        "task": "accounts.tasks.fee_tiers_refresh_task",
        "schedule": FEE_TIER_REFRESH_SECONDS,
    },
    # Web sessions past their expiry (never logged out) are deleted nightly (UTC).
    "accounts-web-sessions-clear-expired": {
        "task": "accounts.tasks.web_sessions_clear_expired_task",
        "schedule": crontab(minute=30, hour=2),
    },
    "accounts-quote-presence-sample": {
        "task": "accounts.tasks.quote_presence_sample_task",
        "schedule": QUOTE_PRESENCE_SAMPLE_SECONDS,
    },
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Demo only: how much of each asset a user may credit to themselves in total (0: only staff
# credit deposits). `make run` sets it so that the demo works; production leaves it at 0.
DEMO_SELF_CREDIT_LIMIT = env.str("DEMO_SELF_CREDIT_LIMIT", default="0").strip()
try:
    _demo_limit_ok = Decimal(DEMO_SELF_CREDIT_LIMIT).is_finite()
    _demo_limit_ok = _demo_limit_ok and Decimal(DEMO_SELF_CREDIT_LIMIT) >= 0
except InvalidOperation:
    _demo_limit_ok = False
_require(
    "DEMO_SELF_CREDIT_LIMIT",
    repr(DEMO_SELF_CREDIT_LIMIT),
    _demo_limit_ok,
    "an amount, 0 or more",
    "the account page and every deposit would fail with a server error",
)

# Audit trail: where daily exports (gzip JSONL + .sha256) go; how many days of partitions are
# kept in PostgreSQL (only exported, fully sealed days are ever dropped); partitions ahead.
AUDIT_EXPORT_DIR = env.path("AUDIT_EXPORT_DIR", default=str(VAR_DIR / "audit-exports"))
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=2192)
AUDIT_PARTITION_DAYS_AHEAD = env.int("AUDIT_PARTITION_DAYS_AHEAD", default=7)

# Any case (LOG_LEVEL=debug had stopped every process with "Unable to configure logger").
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").strip().upper()
if LOG_LEVEL not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
    raise ImproperlyConfigured(
        f"LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {LOG_LEVEL!r}"
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "exchange.log_format.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "filters": {"suspicious_requests": {"()": "exchange.log_format.SuspiciousRequestFilter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "plain" if DEBUG else "json",
            "filters": ["suspicious_requests"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Django's own console handler, on when DEBUG is (as `make run` sets it), wrote each of
        # its lines a second time, unformatted: its records go to the root's handler only.
        "django": {"handlers": [], "propagate": True},
        "celery": {"level": LOG_LEVEL},
        # A line per run of the per-second tasks (expiry, audit sealing) flooded the console
        # `make run` prints its URLs and credentials to, 7 lines a second: warnings and errors
        # of the scheduler and of task runs only.
        "celery.beat": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        # The web server's own lines ("connection open", shutdown) in the same format: uvicorn
        # configured its logger with a plain-text handler before it loaded the application.
        # Only `uvicorn.error`: configuring its parent `uvicorn` reset the children, and the
        # access log `--no-access-log` had turned off came back, a line per request.
        "uvicorn.error": {"handlers": ["stdout"], "level": LOG_LEVEL, "propagate": False},
    },
}
