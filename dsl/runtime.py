"""Functions the compiled rules call at run time.

Null semantics (documented in docs/dsl.md): a missing value is ``None``; arithmetic
and comparisons with ``None`` give ``None``; ``and``/``or``/``not`` follow Kleene's
three-valued logic (SQL's); a condition that ends ``None`` does not hold. The
compiler calls these null-aware helpers only for expressions the checker found
nullable; everything else is emitted as plain Python operators.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from operator import itemgetter
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY = 86400.0
HOUR = 3600.0
_ts = itemgetter(0)


class EventHistory(Protocol):
    """What the rules read about one event type of a profile (see engine.records)."""

    @property
    def count(self) -> int: ...

    @property
    def total(self) -> float: ...

    @property
    def first_at(self) -> float: ...

    @property
    def last_at(self) -> float: ...

    @property
    def recent(self) -> Sequence[tuple[float, float]] | bytes:
        """(timestamp, value) pairs, oldest first; or packed float64s t0, v0, t1, v1, ..."""
        ...


AHEAD_SECONDS = 300.0
"""How far after the decision's time an event still counts in a window ending "now": a
sender's or replica's clock a little ahead stamps events that have already happened
(a purchase stamped 2 s ahead must stop a cart reminder sent now). As far ahead as
TrackEvent accepts a timestamp."""


def count_within(stats: EventHistory | None, now: float, window: float | None) -> float:
    """Events in ``[now - window, now]`` (and up to :data:`AHEAD_SECONDS` after it);
    all-time count without a window.

    >>> class Stats:
    ...     count, recent = 3, [(100.0, 1.0), (200.0, 1.0), (252.0, 1.0)]
    >>> count_within(Stats(), now=250.0, window=100.0)  # (252: stamped just ahead)
    2
    """
    if stats is None:
        return 0
    if window is None:
        return stats.count
    recent, end = stats.recent, now + AHEAD_SECONDS
    if isinstance(recent, bytes):  # packed: the timestamps are every other float
        times = memoryview(recent).cast("d")[::2]
        return bisect_right(times, end) - bisect_left(times, now - window)
    return bisect_right(recent, end, key=_ts) - bisect_left(recent, now - window, key=_ts)


def sum_within(stats: EventHistory | None, now: float, window: float | None) -> float:
    """Sum of event values in ``[now - window, now]`` (and up to :data:`AHEAD_SECONDS`
    after it); all-time total without a window."""
    if stats is None:
        return 0.0
    if window is None:
        return stats.total
    recent, end = stats.recent, now + AHEAD_SECONDS
    if isinstance(recent, bytes):  # packed: t0, v0, t1, v1, ...
        packed = memoryview(recent).cast("d")
        times = packed[::2]
        lo, hi = bisect_left(times, now - window), bisect_right(times, end)
        return math.fsum(packed[2 * lo + 1:2 * hi:2])
    lo = bisect_left(recent, now - window, key=_ts)
    hi = bisect_right(recent, end, key=_ts)
    return math.fsum(v for _, v in recent[lo:hi])


def last_at(stats: EventHistory | None) -> float | None:
    return None if stats is None else stats.last_at


def first_at(stats: EventHistory | None) -> float | None:
    return None if stats is None else stats.first_at


def days_since(now: float, ts: float | None) -> float | None:
    return None if ts is None else (now - ts) / DAY


def hours_since(now: float, ts: float | None) -> float | None:
    return None if ts is None else (now - ts) / HOUR


@lru_cache(maxsize=1024)
def _zone(name: str | None) -> tzinfo:
    """The IANA zone ``name``; UTC for none, or for a name the tz database lacks (or that
    is no file name at all: too long, NUL). Cached either way, so a bad name costs one
    lookup, not one per decision."""
    if not name or not isinstance(name, str):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


@lru_cache(maxsize=1024)
def is_zone(name: str) -> bool:
    """Whether ``name`` is a time zone of the tz database (what ``timezone`` must hold).

    >>> is_zone("Europe/Paris"), is_zone("UTC"), is_zone("Nowhere/Land"), is_zone("../etc")
    (True, True, False, False)
    """
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _local(ts: float | None, zone: str | None) -> datetime | None:
    if ts is None or not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(ts, _zone(zone))
    except (OverflowError, OSError, ValueError):  # outside what datetime holds
        return None


def hour_of_day(ts: float | None, zone: str | None = None) -> float | None:
    """0-23 in the customer's time zone (the profile's ``timezone``, else UTC).

    >>> hour_of_day(1_767_614_400.0), hour_of_day(1_767_614_400.0, "America/New_York")
    (12.0, 7.0)
    """
    local = _local(ts, zone)
    return None if local is None else float(local.hour)


def day_of_week(ts: float | None, zone: str | None = None) -> float | None:
    """0 (Monday) to 6 (Sunday) in the customer's time zone.

    >>> day_of_week(1_767_614_400.0), day_of_week(1_767_614_400.0, "Pacific/Kiritimati")
    (0.0, 1.0)
    """
    local = _local(ts, zone)
    return None if local is None else float(local.weekday())


def best_send_hour(send: Any, now: float) -> float | None:
    """The hour of day (0-23, the customer's zone) of their best send slot: their own
    engagement by hour of the week, shrunk toward the population's
    (:mod:`engine.decide.send_time`); None when nobody has engaged yet."""
    if send is None:
        return None
    at = send.best_at(now)
    return None if at is None else hour_of_day(at, send.zone)


def cluster_of(clusters: Any, name: str) -> float | str | None:
    """The customer's cluster ``name`` (its index, or its given name); None before the
    clusters are learnt or when a feature is unknown (engine.learning.clusters)."""
    return None if clusters is None else clusters.get(name)


def percentile_of(population: Any, key: str, percent: float) -> float | None:
    """The population's ``percent``-th percentile of statistic ``key``
    (engine.decide.population); None while it has no data."""
    return None if population is None else population.percentile(key, percent)


def div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def contains(a: str | None, b: str | None) -> bool | None:
    return None if a is None or b is None else b in a


def starts_with(a: str | None, b: str | None) -> bool | None:
    return None if a is None or b is None else a.startswith(b)


def ends_with(a: str | None, b: str | None) -> bool | None:
    return None if a is None or b is None else a.endswith(b)


def lower(a: str | None) -> str | None:
    return None if a is None else a.lower()


def upper(a: str | None) -> str | None:
    return None if a is None else a.upper()


def coalesce(a: object, b: object) -> object:
    return b if a is None else a


def to_text(value: object, kind: str, zone: str | None = None) -> str:
    """How a value prints inside content: ``40.0`` → ``"40"``, timestamps as dates, other
    numbers to 12 significant digits (a price exactly, without float noise; ``:g`` printed
    23456.78 as ``23456.8`` and 1234567.5 as ``1.23457e+06``). A date is the customer's:
    in ``zone`` (their ``timezone``), else UTC.

    >>> to_text(40.0, "number"), to_text(23456.78, "number"), to_text(1234567.5, "number")
    ('40', '23456.78', '1234567.5')
    >>> to_text(19.9 * 1.1, "number"), to_text(0.1 + 0.2, "number")
    ('21.89', '0.3')
    >>> paris_midnight = 1_768_863_600.0  # 2026-01-20T00:00 in Paris, 23:00 UTC the day before
    >>> to_text(paris_midnight, "timestamp"), to_text(paris_midnight, "timestamp", "Europe/Paris")
    ('2026-01-19', '2026-01-20')
    """
    if value is None:
        return ""
    if kind == "timestamp" and isinstance(value, int | float):
        local = _local(float(value), zone)
        return "" if local is None else local.strftime("%Y-%m-%d")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.12g}"
    return str(value)


HELPERS: dict[str, object] = {
    "_count": count_within,
    "_sum": sum_within,
    "_last": last_at,
    "_first": first_at,
    "days_since": days_since,
    "hours_since": hours_since,
    "hour_of_day": hour_of_day,
    "day_of_week": day_of_week,
    "best_send_hour": best_send_hour,
    "_pct": percentile_of,
    "_cluster": cluster_of,
    "_div": div,
    "contains": contains,
    "starts_with": starts_with,
    "ends_with": ends_with,
    "lower": lower,
    "upper": upper,
    "coalesce": coalesce,
}
