"""Fixtures shared by every app's tests: real processes, the test database's URL, Redis."""

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

BASE_DIR = Path(__file__).resolve().parent
RUN_PREFIX = f"test:{uuid.uuid4().hex[:8]}:"


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@contextmanager
def transaction_held_open(work: Callable[[], object], *, seconds: float = 30):
    """Run `work` in a transaction on a thread of its own (its own connection), left open with
    its locks for the block (at most `seconds`), then committed; yields what `work` returned."""
    import threading

    from django.db import connections, transaction

    done, may_commit = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def hold() -> None:
        try:
            with transaction.atomic():
                result["work"] = work()
                done.set()
                may_commit.wait(seconds)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    assert done.wait(10)
    try:
        yield result["work"]
    finally:
        may_commit.set()
        holder.join(seconds)


def second_waits_for_first(first_write, second_write) -> tuple[bool, object, object]:
    """Run `first_write` in a transaction left open, then `second_write` in another (each on a
    thread of its own, with its own connection); returns whether the second was still waiting
    half a second later, and what each returned, once both have committed."""
    import threading

    from django.db import connection, transaction

    results: dict[str, object] = {}

    def second() -> None:
        try:
            with transaction.atomic():
                results["second"] = second_write()
        finally:
            connection.close()

    with transaction_held_open(first_write, seconds=10) as first_result:
        second_thread = threading.Thread(target=second)
        second_thread.start()
        second_thread.join(0.5)
        still_waiting = second_thread.is_alive()
    second_thread.join(10)
    return still_waiting, first_result, results["second"]


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker, django_db_keepdb):
    """Always create the test database, even when no collected test carries a django_db
    marker: process tests reach it through `live_db`, and must never touch the dev database."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            aliases={"default"},
            keepdb=django_db_keepdb,
        )
    yield
    if not django_db_keepdb:
        with django_db_blocker.unblock():
            teardown_databases(config, verbosity=request.config.option.verbose)


@pytest.fixture(scope="session", autouse=True)
def _redis_prefix_per_run():
    """Every Redis key this test run writes carries its own prefix."""
    from django.conf import settings

    settings.REDIS_KEY_PREFIX = RUN_PREFIX
    yield
    from exchange.redis_connection import redis_client

    client = redis_client()
    keys = list(client.scan_iter(match=RUN_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def process_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    """Environment for real child processes: the test database and this run's Redis prefix."""
    from django.conf import settings
    from django.db import connection

    # The connection's settings carry the test database's name (settings.DATABASES does not).
    url = urlsplit(os.environ["DATABASE_URL"])
    test_url = urlunsplit(url._replace(path="/" + connection.settings_dict["NAME"]))
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_url,
        REDIS_URL=settings.REDIS_URL,
        REDIS_KEY_PREFIX=RUN_PREFIX,
        DJANGO_SETTINGS_MODULE="exchange.settings",
        PYTHONUNBUFFERED="1",
    )
    return env


class Processes:
    """Starts real processes and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], *, env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log_path = self.log_dir / f"{name}.log"
        self.started.append(proc)
        return proc

    def manage(self, *args: str, env: dict[str, str], name: str) -> subprocess.Popen:
        return self.start([sys.executable, "manage.py", *args], env=env, name=name)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def redis_conn():
    from exchange.redis_connection import redis_client

    return redis_client()


def celery_command(*args: str) -> list[str]:
    """The command line of a real Celery process of the project (`worker ...`, `beat`)."""
    return [sys.executable, "-m", "celery", "-A", "exchange", *args, "--loglevel", "INFO"]


def start_web(processes: Processes, *, env: dict[str, str], name: str = "web") -> str:
    """Start the real ASGI web process (as the Procfile does) and return its base URL."""
    import httpx

    from exchange.embedded_servers import free_port
    from exchange.launcher import procfile_programs

    port = free_port()
    # The Procfile's own web command, so the tests run the server as `make run` does.
    command = procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=port)["web"]
    proc = processes.start(shlex.split(command), env=env, name=name)
    base_url = f"http://127.0.0.1:{port}"

    def answering():
        if proc.poll() is not None:
            raise AssertionError(f"web process exited: {proc.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=5)
        except httpx.TransportError:
            return None

    wait_until(answering, timeout=30, interval=0.2)
    return base_url


@pytest.fixture(scope="module")
def exchange_stack(django_db_setup, django_db_blocker, process_env, tmp_path_factory) -> str:
    """The real web process and shard-0 matching worker, once per test module; the base URL.

    Tests using it create their own users and symbols (see `live_db`) and never flush tables
    under the running worker.
    """
    procs = Processes(tmp_path_factory.mktemp("stack"))
    try:
        worker = procs.manage("run_matching", "--shard", "0", env=process_env, name="matching-0")
        base_url = start_web(procs, env=process_env)
        from exchange.redis_connection import redis_client
        from matching.heartbeat import heartbeat_key

        def beating():
            if worker.poll() is not None:
                raise AssertionError(f"worker exited: {worker.log_path.read_text()[-3000:]}")
            return redis_client().get(heartbeat_key(0))

        wait_until(beating, timeout=60, interval=0.2)
        yield base_url
    finally:
        procs.stop_all()


@pytest.fixture
def live_db(django_db_blocker):
    """Database access in autocommit, with nothing flushed afterwards (a worker is running)."""
    with django_db_blocker.unblock():
        yield
