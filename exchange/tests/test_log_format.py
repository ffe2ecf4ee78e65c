"""Logs are one JSON object per line when DEBUG is off."""

import json
import logging

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
