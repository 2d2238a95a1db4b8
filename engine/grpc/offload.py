"""Where blocking work runs on an asynchronous server: never on its event loop.

The loop runs the decision work (short, in process) and awaits asynchronous store I/O
(:class:`~engine.ports.DecideIO`). Calls that wait on a network store's synchronous
client (Feedback's transaction, TrackEvent, reports) and slow in-process work (a
ruleset reload) run in a small thread pool instead; with a store in process memory the
store calls are short and run inline.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")


class Offload:
    """Runs blocking callables for async code: ``await offload.store(fn, ...)`` and
    ``await offload.thread(fn, ...)``."""

    def __init__(self, store_blocks: bool, workers: int = 4) -> None:
        self.store_blocks = store_blocks
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                       thread_name_prefix="arbiter-io")

    async def store(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """A store call: in the pool when the store blocks, else inline."""
        if not self.store_blocks:
            return fn(*args, **kwargs)
        return await self.thread(fn, *args, **kwargs)

    async def thread(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Always in the pool (the loop goes on; a cancelled await leaves the call to
        finish in its thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    def spawn(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Run ``fn`` in the pool without waiting for it (its errors are its own to log)."""
        self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
