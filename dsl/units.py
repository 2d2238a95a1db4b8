"""Durations and dates as rule files write them, in seconds.

>>> duration_seconds("30d")
2592000.0
>>> date_seconds("2026-11-01")
1793491200.0
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def duration_seconds(text: str) -> float:
    """``"30d"`` → 2592000.0; raises ValueError for anything else."""
    match = DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def date_seconds(text: str) -> float:
    """``"2026-11-01"`` (midnight UTC) or an ISO date-time → epoch seconds."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
