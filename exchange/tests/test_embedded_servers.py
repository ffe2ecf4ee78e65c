"""The embedded fallback starts real servers from wheels, keeps data, survives a crashed run."""

import os
import signal
import time

import psycopg
import pytest
import redis

from exchange.embedded_servers import EmbeddedPostgres, EmbeddedRedis

pytestmark = pytest.mark.processes


def postmaster_pid(data_dir) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_embedded_postgres_starts_keeps_data_and_stops(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()[0]
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        assert int(version) >= 140000
    finally:
        server.stop()
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    again = EmbeddedPostgres(tmp_path / "pg")
    url = again.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT value FROM kept").fetchone()[0] == "still here"
    finally:
        again.stop()


def test_embedded_postgres_recovers_from_a_crashed_previous_run(tmp_path):
    first = EmbeddedPostgres(tmp_path / "pg")
    first.start()
    os.kill(postmaster_pid(tmp_path / "pg"), signal.SIGKILL)
    time.sleep(0.5)  # let the killed postmaster's children notice
    # The stale postmaster.pid (and any orphaned backend) must not stop the next run.
    second = EmbeddedPostgres(tmp_path / "pg")
    url = second.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        second.stop()


def test_embedded_postgres_left_running_by_a_killed_launcher_is_replaced(tmp_path):
    orphan = EmbeddedPostgres(tmp_path / "pg")
    orphan.start()
    old_pid = postmaster_pid(tmp_path / "pg")
    successor = EmbeddedPostgres(tmp_path / "pg")
    url = successor.start()
    try:
        assert postmaster_pid(tmp_path / "pg") != old_pid
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        successor.stop()


def test_embedded_redis_starts_persists_and_stops(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    client = redis.Redis.from_url(url)
    assert client.info("server")["redis_version"].startswith("6.2")
    client.set("kept", "yes")
    client.close()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()

    again = EmbeddedRedis(tmp_path / "redis")
    url = again.start()
    try:
        assert redis.Redis.from_url(url).get("kept") == b"yes"
    finally:
        again.stop()


def test_embedded_redis_recovers_from_a_crashed_previous_run(tmp_path):
    crashed = EmbeddedRedis(tmp_path / "redis")
    crashed.start()
    pid = int((tmp_path / "redis" / "redis.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    crashed._process.wait()
    assert (tmp_path / "redis" / "redis.pid").exists()  # the stale file a crash leaves
    successor = EmbeddedRedis(tmp_path / "redis")
    url = successor.start()
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        successor.stop()


def test_embedded_redis_is_started_only_once_it_has_read_its_data_back(tmp_path):
    """The port opens before the append-only file is read back, and Redis answers LOADING until
    then: a restart after a few minutes of `make run` failed the launcher's PING."""
    data = tmp_path / "redis"
    data.mkdir()
    value = b"x" * 200
    command = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$200\r\n" + value + b"\r\n"
    with open(data / "appendonly.aof", "wb") as aof:  # ~60 MB: it takes a while to load
        for chunk in range(30):
            aof.write(b"".join(command % (len(key), key) for key in (
                b"k%d-%d" % (chunk, n) for n in range(10_000))))  # fmt: skip
    server = EmbeddedRedis(data)
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        assert client.ping() and client.dbsize() == 300_000
        client.close()
    finally:
        server.stop()
