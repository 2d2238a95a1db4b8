"""The collector and a long-lived server heap: what was loaded once is not re-scanned.

CPython's cyclic collector walks every tracked object of the oldest generation on
each full collection. In a server nearly all of them are long-lived: the compiled
ruleset, the catalogue, the models. Measured on the retail example (150,000 tracked
objects) one full collection took 120 ms, and 810 ms with a larger learnt state
(bench/heap_pause.py), every request in flight waiting behind it. :func:`settle`
collects once and freezes what survives (:func:`gc.freeze`), so later full
collections walk only what was made since. It runs after start-up and after each
ruleset swap, unfreezing first so that the replaced ruleset's reference cycles are
collected rather than kept for ever.

>>> settle()
>>> gc.get_freeze_count() > 0
True
>>> gc.unfreeze()  # (a doctest leaves the test process as it found it)
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()


def settle() -> None:
    """Collect everything, then freeze the survivors out of later collections."""
    with _lock:  # a reload thread and the start-up may both settle
        gc.unfreeze()
        gc.collect()
        gc.freeze()
