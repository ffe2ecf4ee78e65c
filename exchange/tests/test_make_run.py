"""What `make run` does, driven as a newcomer would: every process up, health ok, the printed
admin credentials (email, password and the 2FA secret) log in to the admin, Swagger UI served
offline, Ctrl-C stops everything."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from base64 import b32decode
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import psycopg
import pytest

from accounts.tests.otp_login import csrf_token
from accounts.two_factor import totp_code
from conftest import wait_until
from exchange.embedded_servers import free_port
from exchange.launcher import clear_stale_supervisor_files

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.processes


@pytest.fixture
def scratch_database():
    """A database of its own (the launcher creates it), dropped afterwards."""
    name = f"launcher_{uuid.uuid4().hex[:8]}"
    url = urlsplit(os.environ["DATABASE_URL"])
    yield urlunsplit(url._replace(path=f"/{name}"))
    with psycopg.connect(urlunsplit(url._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_run_brings_up_every_process_and_ctrl_c_stops_them(tmp_path, scratch_database):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database,
        "VAR_DIR": str(tmp_path / "var"),
        "PORT": str(port),
        "REDIS_KEY_PREFIX": f"test:{uuid.uuid4().hex[:8]}:",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "exchange.launcher", "run"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        output = wait_until(
            lambda: "Press Ctrl-C" in (text := log_path.read_text()) and text, timeout=120
        )
        # Once every process reports in (it had said "degraded" while they started).
        assert "Exchange is up (health: ok)." in output
        assert f"Admin:       {base}/admin/" in output
        assert f"Swagger UI:  {base}/api/docs/" in output
        admin_email, admin_password = re.search(r"admin\s+(\S+@\S+) / (\S+)", output).groups()
        secret = re.search(r"2FA secret ([A-Z2-7]+)", output).group(1)
        assert "otpauth://totp/" in output
        credentials = json.loads((tmp_path / "var" / "demo_credentials.json").read_text())
        assert {c["username"] for c in credentials} == {"admin", "alice", "bob"}
        # The file has the secret as printed (base32, for an authenticator app), not only hex.
        assert next(c for c in credentials if c["role"] == "admin")["totp_secret"] == secret

        supervised = {p.name() for p in psutil.Process(launcher.pid).children(recursive=True)}
        assert any(name.startswith("python") for name in supervised)
        health = wait_until(
            lambda: (r := httpx.get(f"{base}/healthz")).json()["status"] == "ok" and r,
            timeout=60,
        )
        assert health.status_code == 200
        # Shard 0's worker holds the lease; a second one waits as its standby.
        matching = [
            p.pid
            for p in psutil.Process(launcher.pid).children(recursive=True)
            if "run_matching" in " ".join(p.cmdline())
        ]
        assert len(matching) == 2, matching
        assert health.json()["components"]["matching-shard-0"]["pid"] in matching

        with httpx.Client(base_url=base, follow_redirects=False) as client:
            # The admin sends a newcomer to sign in: email and password, then the TOTP code.
            assert client.get("/admin/").headers["location"].startswith("/admin/login/")
            login_url = client.get("/admin/login/?next=/admin/").headers["location"]
            assert login_url.startswith("/accounts/login/")
            login_page = client.get(login_url)
            response = client.post(
                "/accounts/login/",
                data={
                    "email": admin_email,
                    "password": admin_password,
                    "csrfmiddlewaretoken": csrf_token(login_page.text),
                    "next": "/admin/",
                },
            )
            assert response.status_code == 302, response.text[:500]
            verify_url = response.headers["location"]
            assert verify_url.startswith("/accounts/2fa/verify/")
            assert client.get("/admin/").status_code == 302, "no admin before the code"
            verify_page = client.get(verify_url)
            key = b32decode(secret + "=" * (-len(secret) % 8)).hex()
            response = client.post(
                verify_url,
                data={
                    "code": totp_code(key, at=time.time()),
                    "csrfmiddlewaretoken": csrf_token(verify_page.text),
                    "next": "/admin/",
                },
            )
            assert response.status_code == 302 and response.headers["location"] == "/admin/"
            assert client.get("/admin/").status_code == 200

            docs = client.get("/api/docs/")
            assert docs.status_code == 200
            bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', docs.text).group(1)
            assert bundle.startswith("/static/"), "Swagger UI must be served from our server"
            assert client.get(bundle).status_code == 200
            assert client.get("/api/schema/").status_code == 200
            assert "AAPL" in client.get("/").text
        children = psutil.Process(launcher.pid).children(recursive=True)
    finally:
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
        exit_code = launcher.wait(timeout=60)
    assert exit_code == 0, log_path.read_text()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], f"still running after Ctrl-C: {alive}"


def test_a_crashed_runs_supervisor_files_do_not_block_the_next_run(tmp_path, monkeypatch):
    import exchange.launcher as launcher

    monkeypatch.setattr(launcher, "VAR_DIR", tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "supervisord.pid").write_text(str(dead.pid))
    (tmp_path / "supervisor.sock").write_text("")
    clear_stale_supervisor_files()
    assert not (tmp_path / "supervisord.pid").exists()
    assert not (tmp_path / "supervisor.sock").exists()


def test_a_running_supervisor_is_not_started_twice(tmp_path, monkeypatch):
    import exchange.launcher as launcher

    monkeypatch.setattr(launcher, "VAR_DIR", tmp_path)
    config = tmp_path / "supervisord.conf"
    config.write_text(launcher.supervisord_config({}, var_dir=tmp_path, logs_to_files=True))
    running = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (tmp_path / "supervisord.pid").exists(), timeout=20)
        with pytest.raises(launcher.LaunchError, match="already running"):
            clear_stale_supervisor_files()
    finally:
        running.terminate()
        running.wait(timeout=20)


def test_a_recycled_pid_of_another_program_is_not_taken_for_supervisord(tmp_path, monkeypatch):
    import exchange.launcher as launcher

    monkeypatch.setattr(launcher, "VAR_DIR", tmp_path)
    (tmp_path / "supervisord.pid").write_text(str(os.getpid()))  # pytest, alive
    clear_stale_supervisor_files()
    assert not (tmp_path / "supervisord.pid").exists()


def test_make_run_refuses_a_web_port_something_already_serves(monkeypatch, capsys):
    """A crashed run's web process answered the new run's health check ("Exchange is up")
    while the new web process failed to bind and was restarted again and again."""
    import socket

    from exchange import launcher

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("PORT", str(port))
        assert launcher.main(["run"]) == 2
    assert f"port {port} is in use" in capsys.readouterr().err


def test_the_embedded_servers_are_named_in_var_while_they_run(tmp_path, monkeypatch):
    """For the `manage.py` commands the README has one run beside `make run`."""
    from contextlib import ExitStack

    from exchange import launcher

    monkeypatch.setattr(launcher, "VAR_DIR", tmp_path)
    environ = {"DATABASE_URL": "postgres://given@127.0.0.1:5432/exchange"}
    with ExitStack() as stack:
        assert launcher.start_embedded_servers(stack, environ) == ["redis"]
        named = json.loads((tmp_path / "embedded-servers.json").read_text())
        assert named == {"REDIS_URL": environ["REDIS_URL"]}  # the given one is not repeated
    assert not (tmp_path / "embedded-servers.json").exists()
