"""Log output: readable text, or one JSON object per line for log collectors.

>>> import logging
>>> record = logging.LogRecord("arbiter.access", logging.INFO, "", 0, "Decide OK", (), None)
>>> record.rpc = "Decide"
>>> import json
>>> json.loads(JsonFormatter().format(record))["rpc"]
'Decide'
"""

from __future__ import annotations

import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXTRA_FIELDS = ("rpc", "code", "ms", "decision_id")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...the access fields, "error"}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: int, fmt: str) -> None:
    """Root logging: ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
