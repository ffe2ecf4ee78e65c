"""docker-compose.yml and the Procfile describe the same processes (compose can't run here)."""

import json
import shlex
from pathlib import Path

import yaml

from exchange.launcher import procfile_programs

BASE_DIR = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def test_compose_uses_stock_postgres_and_redis_images():
    services = compose()["services"]
    assert services["postgres"]["image"].split(":")[0] == "postgres"
    assert services["redis"]["image"].split(":")[0] == "redis"


def test_compose_runs_every_procfile_process_from_the_dockerfile():
    services = compose()["services"]
    expected = procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=8000)
    for name in expected:
        assert name in services, f"Procfile process {name} missing from docker-compose.yml"
        assert services[name]["build"] == "."
        assert services[name]["restart"] == "unless-stopped"
    assert (BASE_DIR / "Dockerfile").exists()


def test_compose_passes_the_same_settings_variables():
    services = compose()["services"]
    for name in ("web", "matching-0", "standby-0", "worker", "beat", "migrate"):
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"] == "redis://redis:6379/0"
        assert {"SECRET_KEY", "ALLOWED_HOSTS", "MATCHING_SHARDS", "DEBUG"} <= set(environment)


def test_compose_commands_match_the_procfile():
    services = compose()["services"]
    assert services["matching-0"]["command"][-3:] == ["run_matching", "--shard", "0"]
    assert services["standby-0"]["command"] == services["matching-0"]["command"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "exchange", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "exchange", "beat"]
    assert "exchange.asgi:application" in services["web"]["command"]


def without_host_and_port(argv: list[str]) -> list[str]:
    """A uvicorn command line without its interpreter, `--host` and `--port` (they differ by
    place)."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in ("--host", "--port"):
            skip = True
        else:
            kept.append(arg)
    return kept


def test_the_images_own_web_command_is_the_procfiles():
    # The image's CMD (what `docker run` starts without a command) lacked the Procfile's
    # WebSocket flags: messages up to uvicorn's 16 MiB instead of the documented 64 KiB (1009
    # past it), compressed frames, and no direct market-data writes.
    procfile = shlex.split(
        procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=8000)["web"]
    )
    cmd = next(
        line
        for line in (BASE_DIR / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD")
    )
    image = json.loads(cmd.removeprefix("CMD"))
    assert without_host_and_port(image) == without_host_and_port(procfile)
    assert without_host_and_port(compose()["services"]["web"]["command"]) == (
        without_host_and_port(procfile)
    )


def test_the_image_leaves_out_local_state_and_the_hosts_packages():
    """`COPY . .` had copied var/ into the image (the development secret key, the demo's
    credentials and the admin's 2FA secret, the embedded PostgreSQL's data), and the host's
    .venv and .git with it."""
    ignored = {
        line.strip().rstrip("/")
        for line in (BASE_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"var", ".venv", ".git", "node_modules"} <= ignored
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    # What the image needs from the build context is still sent.
    for needed in ("requirements.txt", "package.json", "package-lock.json"):
        assert needed in dockerfile and needed not in ignored


def test_compose_starts_the_processes_after_the_migrations():
    """They had started beside `migrate`: the matching worker, beat and the web failed on
    tables not created yet, restarting until they were."""
    services = compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=8000):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends_on["postgres"] == depends_on["redis"] == {"condition": "service_healthy"}


def test_compose_keeps_the_audit_exports_and_anchors_in_a_volume():
    """The audit trail's exports and anchors.log (the chain's anchor outside the database)
    were written inside the worker's container and lost whenever it was recreated."""
    config = compose()
    workdir = next(
        line.split()[1]
        for line in (BASE_DIR / "Dockerfile").read_text().splitlines()
        if line.startswith("WORKDIR") and "/assets" not in line
    )
    wanted = f"audit-exports:{workdir}/var/audit-exports"  # AUDIT_EXPORT_DIR's default
    assert "audit-exports" in config["volumes"]
    for name in [*procfile_programs(BASE_DIR / "Procfile", shard_count=1, port=8000), "migrate"]:
        assert wanted in config["services"][name]["volumes"], name
