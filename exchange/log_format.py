"""One JSON object per log line on stdout, for log shippers (used when DEBUG is off)."""

import json
import logging
from datetime import UTC, datetime

# Not extras: the record's own attributes, and uvicorn's `color_message` (the message again,
# with terminal colour codes).
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """Format a record as a single JSON line with time, level, logger, message and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class SuspiciousRequestFilter(logging.Filter):
    """A request Django calls suspicious (a Host header not in ALLOWED_HOSTS, an admin lookup
    on a field it does not allow) is logged by Django at ERROR with its traceback, on
    `django.security.<error>`, and answered 400: a client's mistake or a probe, not a fault of
    the exchange. One line at WARNING instead (the 400 itself is logged by `django.request`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True
