"""`python -m exchange.launcher run|test|preflight`: what `make run` and `make test` do.

1. When DATABASE_URL / REDIS_URL are not set, start the embedded PostgreSQL / Redis (data in
   var/, reused across runs) and point the URLs at them.
2. Check both are reachable, and say in one line which is not and how to fix it.
3. `run`: migrate, seed the demo, and start every Procfile process under supervisord, which
   restarts a process that dies; Ctrl-C stops everything, embedded servers included.
   `test`: run the test suite (extra arguments go to pytest).
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")


class LaunchError(Exception):
    """A problem the user must fix; printed as one line, no traceback."""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def start_embedded_servers(stack: ExitStack, environ: dict) -> list[str]:
    """Start the embedded servers whose URL is missing; return the names of those started."""
    from exchange.embedded_servers import (
        EMBEDDED_SERVERS_FILE,
        EmbeddedPostgres,
        EmbeddedRedis,
        EmbeddedServerError,
    )

    started = []
    try:
        if not environ.get("DATABASE_URL"):
            print("DATABASE_URL not set: starting the embedded PostgreSQL (var/postgres)")
            postgres = EmbeddedPostgres(VAR_DIR / "postgres")
            server_url = postgres.start()
            stack.callback(postgres.stop)
            environ["DATABASE_URL"] = with_database(server_url, "exchange")
            started.append("postgres")
        if not environ.get("REDIS_URL"):
            print("REDIS_URL not set: starting the embedded Redis (var/redis)")
            redis_server = EmbeddedRedis(VAR_DIR / "redis")
            environ["REDIS_URL"] = redis_server.start()
            stack.callback(redis_server.stop)
            started.append("redis")
    except ImportError as exc:
        raise LaunchError(
            f"cannot start an embedded server ({exc.name} is not installed): install "
            "requirements-dev.txt, or set DATABASE_URL and REDIS_URL"
        ) from exc
    except EmbeddedServerError as exc:
        raise LaunchError(str(exc)) from exc
    if started:
        # For `manage.py` commands run beside this one (see settings._embedded_server_urls).
        names = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
        urls_file = VAR_DIR / EMBEDDED_SERVERS_FILE
        urls_file.write_text(json.dumps({names[n]: environ[names[n]] for n in started}))
        stack.callback(urls_file.unlink, missing_ok=True)
    return started


def check_postgres(url: str, *, create_database: bool) -> None:
    """Connect to PostgreSQL (creating the database when asked and missing)."""
    import psycopg

    if not url.startswith(("postgres://", "postgresql://")):
        raise LaunchError(
            f"DATABASE_URL={redact(url)} is not a PostgreSQL URL: use "
            "postgres://user@host:port/dbname, or unset it to use the embedded server"
        )
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return
    except psycopg.ProgrammingError:
        # libpq cannot parse it; its message quotes the offending part, often the password.
        raise LaunchError(
            f"DATABASE_URL={redact(url)} is not a URL PostgreSQL can read: percent-encode "
            "special characters in the user and password (@ as %40, : as %3A, / as %2F, "
            "space as %20)"
        ) from None
    except psycopg.OperationalError as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        missing_db = "does not exist" in str(exc) and "database" in str(exc)
        if not (missing_db and create_database):
            raise LaunchError(
                f"cannot connect to PostgreSQL at DATABASE_URL={redact(url)}: {message}. "
                "Fix DATABASE_URL (postgres://user@host:port/dbname) or unset it to use the "
                "embedded server"
            ) from exc
    dbname = urlsplit(url).path.lstrip("/")
    try:
        with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    except psycopg.Error as exc:
        # A user without CREATEDB, no `postgres` database to connect to, a URL libpq cannot
        # read once renamed: each had been a traceback.
        # The server's reason, not libpq's parse error (it quotes the URL, password and all).
        lines = str(exc).strip().splitlines()
        said = exc.sqlstate or isinstance(exc, psycopg.OperationalError)
        reason = lines[-1] if lines and said else ""
        raise LaunchError(
            f"database {dbname!r} of DATABASE_URL={redact(url)} does not exist and could not "
            f"be created{': ' + reason if reason else ''}. Create it, or fix DATABASE_URL"
        ) from None
    print(f"created database {dbname}")


def check_redis(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError) as exc:
        raise LaunchError(
            f"cannot connect to Redis at REDIS_URL={redact(url)}: {exc}. Fix REDIS_URL "
            "(redis://host:port/db) or unset it to use the embedded server"
        ) from exc


def manage(*args: str) -> None:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR)
    if result.returncode != 0:
        raise LaunchError(f"`manage.py {' '.join(args)}` failed (exit {result.returncode})")


def procfile_programs(procfile: Path, *, shard_count: int, port: int) -> dict[str, str]:
    """Expand the Procfile into supervisord programs: one matching worker per shard."""
    programs = {}
    for line in procfile.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        command = command.strip().replace("${PORT}", str(port))
        shards = range(shard_count) if "${SHARD}" in command else [None]
        for shard in shards:
            argv = shlex.split(command.replace("${SHARD}", str(shard)))
            if argv[0] == "python":
                argv[0] = sys.executable
            elif argv[0] == "celery":
                argv[:1] = [sys.executable, "-m", "celery"]
            program = name.strip() if shard is None else f"{name.strip()}-{shard}"
            programs[program] = shlex.join(argv)
    return programs


def supervisord_config(
    programs: dict[str, str], *, var_dir: Path | None = None, logs_to_files: bool = False
) -> str:
    """supervisord settings running `programs` (name -> command), restarting any that dies.

    Program output goes to the console (`make run`), or to `<var_dir>/log/<name>.log`.
    """
    var_dir = var_dir or VAR_DIR
    log_dir = var_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    program_log = str(log_dir / "%(program_name)s.log") if logs_to_files else "/dev/stdout"
    sections = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={log_dir / 'supervisord.log'}",
        f"pidfile={var_dir / 'supervisord.pid'}",
        f"childlogdir={log_dir}",
        "",
        "[unix_http_server]",
        f"file={var_dir / 'supervisor.sock'}",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{var_dir / 'supervisor.sock'}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for name, command in programs.items():
        sections += [
            "",
            f"[program:{name}]",
            f"command={command}",
            f"directory={BASE_DIR}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "startretries=100",
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=10",
            "redirect_stderr=true",
            f"stdout_logfile={program_log}",
            "stdout_logfile_maxbytes=0",
        ]
    return "\n".join(sections) + "\n"


def supervisord_running(pid: int) -> bool:
    """Whether `pid` is a live supervisord (a recycled pid of another program is not)."""
    import psutil

    try:
        return "supervisord" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def clear_stale_supervisor_files() -> None:
    """Remove the pid and socket files of a supervisord that is no longer running."""
    pid_file = VAR_DIR / "supervisord.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if pid and supervisord_running(pid):
            raise LaunchError(
                f"another `make run` is already running (supervisord pid {pid}); stop it first"
            )
        pid_file.unlink(missing_ok=True)
    (VAR_DIR / "supervisor.sock").unlink(missing_ok=True)


def demo_credential_lines(credentials: list[dict]) -> list[str]:
    """The demo accounts as printed: email / password, and the admin's 2FA secret (the admin
    requires a one-time code; these are development credentials)."""
    from accounts.two_factor import otpauth_uri, totp_secret_base32

    lines = []
    for user in credentials:
        email = user.get("email", user["username"])
        lines.append(f"  {user['role']:<11}  {email} / {user['password']}")
        if user.get("totp_key"):
            lines += [
                f"  {'':<11}  2FA secret {totp_secret_base32(user['totp_key'])} (add it to an "
                "authenticator app,",
                f"  {'':<11}  or run `.venv/bin/python manage.py demo_totp_code` for the code)",
                f"  {'':<11}  {otpauth_uri(key_hex=user['totp_key'], account=email)}",
            ]
    return lines


# How long the banner waits for /healthz to say `ok` once the web process answers.
HEALTH_SETTLE_SECONDS = 20


def announce_when_up(port: int, stop: threading.Event) -> None:
    """Print the URLs once the web process answers /healthz: when it is `ok`, or with what it
    says after a while (it said "degraded" for the few seconds the other processes take to
    send their first heartbeats)."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    settle_until = None
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
                status = json.load(response)["status"]
        except urllib.error.HTTPError as exc:
            status = json.load(exc)["status"]
        except (OSError, ValueError):
            stop.wait(0.5)
            continue
        settle_until = settle_until or time.monotonic() + HEALTH_SETTLE_SECONDS
        if status != "ok" and time.monotonic() < settle_until:
            stop.wait(0.5)
            continue
        credentials = VAR_DIR / "demo_credentials.json"
        lines = [
            "",
            f"Exchange is up (health: {status}).",
            f"  Web UI:      {base}/",
            f"  Swagger UI:  {base}/api/docs/",
            f"  Admin:       {base}/admin/",
            f"  Health:      {base}/healthz",
        ]
        if credentials.exists():
            lines += demo_credential_lines(json.loads(credentials.read_text()))
        lines.append("Press Ctrl-C to stop everything.")
        print("\n".join(lines), flush=True)
        return


def check_port_free(port: int) -> None:
    """Refuse to start when something already serves the web port: a crashed run's web
    process left behind answered the banner's health check ("Exchange is up"), while the new
    one failed to bind, restarted by supervisord over and over."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise LaunchError(
                f"port {port} is in use ({exc.strerror}): another `make run`, or the processes "
                f"a crashed one left behind (`pgrep -af 'exchange.asgi|celery -A exchange'`), "
                "serve there. Stop them, or choose another port: PORT=8001 make run"
            ) from exc


def run_supervised(environ: dict) -> int:
    from django.conf import settings  # settings are valid: preflight passed

    port = web_port(environ)
    programs = procfile_programs(
        BASE_DIR / "Procfile", shard_count=settings.MATCHING_SHARDS, port=port
    )
    config = VAR_DIR / "supervisord.conf"
    config.write_text(supervisord_config(programs))
    clear_stale_supervisor_files()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)], cwd=BASE_DIR
    )

    def forward(signum, _frame):
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)

    # Ctrl-C reaches supervisord from the terminal as well; we only make sure it stops.
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    stop_announcing = threading.Event()
    threading.Thread(target=announce_when_up, args=(port, stop_announcing), daemon=True).start()
    code = supervisor.wait()
    stop_announcing.set()
    return code


def run_tests(pytest_args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=BASE_DIR)


def web_port(environ: dict) -> int:
    value = environ.get("PORT") or "8000"
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise LaunchError(f"PORT must be a port number (1-65535), got {value!r}")
    return port


def check_settings() -> None:
    """Load the settings, so that a wrong value of any variable (not only the URLs) is told
    here in one line: preflight and `make test` had passed it on to a traceback later."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018 (loading them is the check)
    except ImproperlyConfigured as exc:
        raise LaunchError(f"configuration error: {exc}") from None


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "preflight"}:
        print("usage: python -m exchange.launcher run|test|preflight [pytest args]")
        return 2
    mode, rest = argv[0], argv[1:]
    os.chdir(BASE_DIR)
    VAR_DIR.mkdir(exist_ok=True)
    environ = os.environ
    environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")
    if mode == "run":
        try:
            check_port_free(web_port(environ))
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        environ.setdefault("DEBUG", "1")
        # The demo lets a signed-up user credit themselves some play money (staff-only otherwise).
        environ.setdefault("DEMO_SELF_CREDIT_LIMIT", "1000000")
    started: list[str] = []
    with ExitStack() as stack:
        try:
            started = start_embedded_servers(stack, environ)
            check_postgres(environ["DATABASE_URL"], create_database=True)
            check_redis(environ["REDIS_URL"])
            check_settings()
            if mode == "preflight":
                print("PostgreSQL and Redis are reachable")
                return 0
            if mode == "test":
                return run_tests(rest)
            manage("migrate", "--noinput")
            manage("seed_demo")
            import django

            django.setup()
            return run_supervised(environ)
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            # Embedded servers stop when the stack closes; say so, since it takes a moment.
            if started:
                print(f"stopping embedded {' and '.join(started)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
