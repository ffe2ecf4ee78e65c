"""The launcher behind `make run` / `make test`: clear errors, Procfile under supervisord."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.embedded_servers import free_port
from exchange.launcher import procfile_programs, redact, supervisord_config

BASE_DIR = Path(__file__).resolve().parents[2]


def preflight(env_vars: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path / "var"), **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "exchange.launcher", "preflight"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unreachable_database_url_gives_one_line_naming_it(tmp_path):
    port = free_port()
    result = preflight(
        {
            "DATABASE_URL": f"postgres://postgres:hunter2@127.0.0.1:{port}/exchange",
            "REDIS_URL": os.environ["REDIS_URL"],
        },
        tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot connect to PostgreSQL at DATABASE_URL=postgres://")
    assert f"127.0.0.1:{port}/exchange" in lines[0]
    assert "hunter2" not in lines[0]
    assert "unset it to use the embedded server" in lines[0]


def test_unreachable_redis_url_gives_one_line_naming_it(tmp_path):
    port = free_port()
    result = preflight(
        {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
        tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"error: cannot connect to Redis at REDIS_URL=redis://127.0.0.1:{port}/0"
    )


def test_wrong_scheme_in_database_url_says_what_to_use(tmp_path):
    result = preflight(
        {"DATABASE_URL": "mysql://root@127.0.0.1/exchange", "REDIS_URL": os.environ["REDIS_URL"]},
        tmp_path,
    )
    assert result.returncode == 2
    assert "is not a PostgreSQL URL: use postgres://user@host:port/dbname" in result.stderr


def test_reachable_servers_pass_preflight(tmp_path):
    result = preflight(
        {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL and Redis are reachable" in result.stdout


def test_passwords_are_redacted_from_urls():
    assert redact("postgres://u:pw@h:1/db") == "postgres://u:***@h:1/db"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_procfile_runs_one_matching_worker_per_shard():
    programs = procfile_programs(BASE_DIR / "Procfile", shard_count=3, port=8123)
    assert sorted(programs) == [
        "beat",
        "demo",
        "matching-0",
        "matching-1",
        "matching-2",
        "standby-0",
        "standby-1",
        "standby-2",
        "web",
        "worker",
    ]
    assert programs["matching-2"].endswith("manage.py run_matching --shard 2")
    assert programs["standby-2"] == programs["matching-2"]  # a second worker: the standby
    assert "--port 8123" in programs["web"]
    assert programs["web"].startswith(sys.executable)
    assert programs["worker"].startswith(f"{sys.executable} -m celery -A exchange worker")


def test_supervisor_restarts_every_process_that_dies():
    config = supervisord_config({"web": "python web", "matching-0": "python worker"})
    for program in ("web", "matching-0"):
        section = config.split(f"[program:{program}]")[1].split("[program:")[0]
        assert "autorestart=true" in section
        assert "stopasgroup=true" in section
    assert "nodaemon=true" in config


def test_a_database_url_libpq_cannot_read_gives_one_line_without_the_password(tmp_path):
    """An unencoded space or `%` in the password had been a psycopg traceback quoting it."""
    result = preflight(
        {
            "DATABASE_URL": "postgres://trader:hunter 2%zz@127.0.0.1:5432/exchange",
            "REDIS_URL": os.environ["REDIS_URL"],
        },
        tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is not a URL PostgreSQL can read: percent-encode special characters" in lines[0]
    assert "hunter" not in result.stderr and "Traceback" not in result.stderr


def test_preflight_names_a_wrong_setting_besides_the_urls(tmp_path):
    # It had said "PostgreSQL and Redis are reachable", and `make test` ran into a traceback.
    servers = {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
    result = preflight({**servers, "MATCHING_SHARDS": "two"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: configuration error: MATCHING_SHARDS must be a whole number, got 'two'"
    ]


def test_a_web_port_that_is_not_a_number_is_named(tmp_path):
    # `PORT=http make run` had been a ValueError traceback.
    env = {"PATH": os.environ["PATH"], "VAR_DIR": str(tmp_path / "var"), "PORT": "http"}
    result = subprocess.run(
        [sys.executable, "-m", "exchange.launcher", "run"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: PORT must be a port number (1-65535), got 'http'"
    ]


def test_a_database_that_cannot_be_created_gives_one_line(tmp_path):
    """django-environ's socket form (postgres:////run/dir/db) reads, to libpq, as a database
    named after the path: preflight went on to create it and ended in a psycopg traceback (so
    did a user without CREATEDB)."""
    if not Path("/var/run/postgresql").is_dir():
        pytest.skip("no PostgreSQL socket directory here")
    url = "postgres:////var/run/postgresql/h82_never_created"
    result = preflight({"DATABASE_URL": url, "REDIS_URL": os.environ["REDIS_URL"]}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ")
