"""JSON-lines logs on stderr, each line carrying the trace id of the call it belongs to."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

trace_id_var: ContextVar[str] = ContextVar("trace_id", default="")


def describe_error(exc: BaseException) -> str:
    """An exception as a log line names it: its class, and its text when it has one. Many
    have none (a TimeoutError, an etcd client's errors), and "%s" alone would log "()"."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JsonLinesFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = trace_id_var.get()
        if trace_id:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        # Every non-ASCII character escaped: U+2028, U+2029, U+0085 and the C1 controls end a
        # line for some readers, and a client's text (a path, a name) must not split a record.
        return json.dumps(line)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that would otherwise log every connection at INFO.
    for noisy in ("hypercorn.access", "granian.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
