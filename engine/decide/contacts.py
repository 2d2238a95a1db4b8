"""The contact history as contact policies read it: outcomes of actions in a window.

>>> from engine.records import Profile
>>> p = Profile("u", contacts={"offer": [(100.0, "impression", "email"),
...                                      (200.0, "impression", "web")]})
>>> impressions_within(p, "offer", now=250.0, window=100.0)
1
>>> outcomes_within(p, ("offer",), 250.0, 1000.0, channel="email")
1
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.records import Profile


def outcomes_within(profile: Profile | None, action_ids: Iterable[str], now: float,
                    window: float, outcome: str = "impression", channel: str | None = None
                    ) -> int:
    """Outcomes of these actions in ``(now - window, now]``, on one channel or any."""
    if profile is None or not profile.contacts:  # most customers: nothing shown yet
        return 0
    start = now - window
    contacts = profile.contacts
    count = 0
    for action_id in action_ids:
        for at, kind, where in contacts.get(action_id, ()):
            if kind == outcome and start < at <= now and (channel is None or where == channel):
                count += 1
    return count


def impressions_within(profile: Profile | None, action_id: str, now: float,
                       window: float) -> int:
    """Impressions of one action in ``(now - window, now]``."""
    return outcomes_within(profile, (action_id,), now, window)


def last_contact(profile: Profile | None, action_id: str, outcome: str = "impression"
                 ) -> float | None:
    """When this action last had this outcome, if ever."""
    if profile is None:
        return None
    times = [at for at, kind, _ in profile.contacts.get(action_id, ()) if kind == outcome]
    return max(times) if times else None
