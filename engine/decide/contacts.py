"""The contact history as contact policies read it: outcomes of actions in a window.

Each action's history is a :class:`~engine.records.ContactLog` (times packed, a code
per contact) or, in profiles written by older builds, a list of (timestamp, outcome,
channel); every reader here takes either.

>>> from engine.records import Profile
>>> p = Profile("u", contacts={"offer": [(100.0, "impression", "email"),
...                                      (200.0, "impression", "web")]})
>>> impressions_within(p, "offer", now=250.0, window=100.0)
1
>>> outcomes_within(p, ("offer",), 250.0, 1000.0, channel="email")
1
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from engine.records import ContactHistory, ContactLog, Profile


def contact_entries(history: ContactHistory) -> list[tuple[float, str, str]]:
    """An action's contacts as (timestamp, outcome, channel), oldest first.

    >>> from array import array
    >>> log = ContactLog(array("d", [1.0, 2.0]).tobytes(), bytes([1, 0]),
    ...                  [("click", "web"), ("impression", "web")])
    >>> contact_entries(log)
    [(1.0, 'impression', 'web'), (2.0, 'click', 'web')]
    """
    if isinstance(history, ContactLog):
        kinds = history.kinds
        return [(at, *kinds[code]) for at, code in
                zip(memoryview(history.times).cast("d"), history.codes, strict=True)]
    return [(at, outcome, channel) for at, outcome, channel in history]


def _count(history: ContactHistory, start: float, outcome: str, channel: str | None) -> int:
    """This outcome's contacts after ``start`` on ``channel`` (or any)."""
    if isinstance(history, ContactLog):
        times = memoryview(history.times).cast("d")
        lo, hi = bisect_right(times, start), len(times)
        if lo >= hi:
            return 0
        codes, count = history.codes, 0
        for code, (kind, where) in enumerate(history.kinds):
            if kind == outcome and (channel is None or where == channel):
                count += codes.count(code, lo, hi)
        return count
    count = 0
    for at, kind, where in history:
        if kind == outcome and start < at and (channel is None or where == channel):
            count += 1
    return count


def outcomes_within(profile: Profile | None, action_ids: Iterable[str], now: float,
                    window: float, outcome: str = "impression", channel: str | None = None
                    ) -> int:
    """Outcomes of these actions since ``now - window``, on one channel or any. Those
    stamped after ``now`` count too: they have happened (a send recorded by another
    replica whose clock is a little ahead, or while this decision was being made), and a
    cap that left them out would let one send too many.

    >>> from engine.records import Profile
    >>> p = Profile("u", contacts={"offer": [(100.0, "impression", "email"),
    ...                                      (200.0, "impression", "email"),
    ...                                      (260.0, "impression", "email")]})
    >>> outcomes_within(p, ("offer",), now=250.0, window=100.0)  # (the first is too old)
    2
    """
    if profile is None or not profile.contacts:  # most customers: nothing shown yet
        return 0
    start = now - window
    contacts = profile.contacts
    count = 0
    for action_id in action_ids:
        history = contacts.get(action_id)
        if history:
            count += _count(history, start, outcome, channel)
    return count


def impressions_within(profile: Profile | None, action_id: str, now: float,
                       window: float) -> int:
    """Impressions of one action since ``now - window`` (:func:`outcomes_within`)."""
    return outcomes_within(profile, (action_id,), now, window)


def last_contact(profile: Profile | None, action_id: str, outcome: str = "impression"
                 ) -> float | None:
    """When this action last had this outcome, if ever."""
    if profile is None:
        return None
    history = profile.contacts.get(action_id)
    if not history:
        return None
    if isinstance(history, ContactLog):
        codes = history.codes
        newest = max((codes.rfind(code) for code, (kind, _) in enumerate(history.kinds)
                      if kind == outcome), default=-1)
        return memoryview(history.times).cast("d")[newest] if newest >= 0 else None
    times = [at for at, kind, _ in history if kind == outcome]
    return max(times) if times else None
