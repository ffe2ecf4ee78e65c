"""Logs are one JSON object per line when DEBUG is off."""

import json
import logging

import httpx
import pytest

from conftest import start_web
from exchange.log_format import JsonFormatter


def test_record_becomes_one_json_line_with_extras():
    record = logging.makeLogRecord(
        {
            "name": "matching.worker",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "lease acquired for %s",
            "args": ("shard 0",),
            "shard": 0,
            "epoch": 7,
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "lease acquired for shard 0"
    assert entry["level"] == "info"
    assert entry["logger"] == "matching.worker"
    assert (entry["shard"], entry["epoch"]) == (0, 7)
    assert entry["ts"].endswith("Z")


def test_exception_is_kept_inside_the_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]


@pytest.mark.processes
def test_the_web_servers_own_lines_are_json_without_their_colour_codes(processes, process_env):
    # uvicorn had its own plain-text handler: "INFO:     connection open" among the JSON lines
    # (324 of 555 lines of one web log).
    web = start_web(processes, env={**process_env, "DEBUG": "false"}, name="web-log-format")
    assert httpx.get(f"{web}/healthz", timeout=15).status_code in (200, 503)
    text = (processes.log_dir / "web-log-format.log").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON, all
    server = [e for e in entries if e["logger"].startswith("uvicorn")]
    assert server and all("color_message" not in e for e in server)
    # The Procfile turns the access log off: it had come back, a line per request.
    assert not [e for e in entries if e["logger"] == "uvicorn.access"]


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_suspicious_request_is_one_warning_line_without_a_traceback(processes, process_env):
    # Django logs a forged Host header or a disallowed admin lookup at ERROR with a traceback
    # (45 such lines in one probe of the admin): a client's mistake, answered 400.
    web = start_web(processes, env={**process_env, "DEBUG": "false"}, name="web-suspicious")
    forged = httpx.get(f"{web}/api/v1/time", headers={"Host": "evil.example"}, timeout=15)
    assert forged.status_code == 400
    text = (processes.log_dir / "web-suspicious.log").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    security = [e for e in entries if e["logger"].startswith("django.security.")]
    assert [(e["logger"], e["level"]) for e in security] == [
        ("django.security.DisallowedHost", "warning")
    ]
    assert "evil.example" in security[0]["msg"] and "exc" not in security[0]
    assert not [e for e in entries if e["level"] == "error"], text[-3000:]
