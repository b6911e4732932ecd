"""Log setup for the command line: levels for our loggers, text or JSON lines on stderr.

Our loggers are ``stream_monitor`` and ``models``; ``--log-level`` and ``-v`` change only
those, so ``-v`` does not turn on DEBUG for aiohttp, urllib3, asyncio or torch (their
INFO-and-above records still pass). ``json``: one JSON object per line with ``ts`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger``, ``message`` and, when there is one,
``exc`` (the formatted exception), for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LogFormat = Literal["text", "json"]
LEVELS = ("debug", "info", "warning", "error")
OUR_LOGGERS = ("stream_monitor", "models")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str | None = None, verbose: bool = False, fmt: LogFormat = "text") -> None:
    """Configure the root handler on stderr. ``level`` (one of :data:`LEVELS`, default
    ``info``; ``verbose`` means ``debug``) applies to our loggers; other libraries log at
    INFO and above (or at ``level`` when that is stricter)."""
    name = (level or ("debug" if verbose else "info")).lower()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}")
    ours = getattr(logging, name.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(ours, logging.INFO))
    for logger in OUR_LOGGERS:
        logging.getLogger(logger).setLevel(ours)
