"""Decision logs: every decision and every acknowledged outcome, as JSON lines.

Like OPA's decision logs, they record what was decided, from which input, by
which ruleset revision, so that a decision can be audited and a candidate policy
evaluated offline (``arbiter replay``). The request builds the entry
(:mod:`engine.decision_log`) and enqueues it; a background thread encodes and
writes the lines and flushes at least every ``flush_seconds``.

A decision line::

    {"kind": "decision", "decision_id": "...", "at": 1790000000.0, "user_id": "ann",
     "placement": "homepage_banner", "channel": "web", "revision": "ecab5d1c5852",
     "context": {...}, "profile": {...}, "holdout": null,
     "actions": [{"action_id": "new_arrivals", "rank": 1, "score": 0.9,
                  "propensity": 0.06, "probability": 0.41, "experiment": "hero_test",
                  "arm": "new_arrivals"}]}

An outcome line: ``{"kind": "outcome", "decision_id", "user_id", "action_id",
"outcome", "value", "at"}`` (``user_id`` from session 18). Profile attributes declared
``pii`` are replaced by ``"<pii>"``.

The queue is bounded (``max_queued`` lines): when the writer falls behind (a slow disk),
new lines are dropped and counted (``dropped``, the ``arbiter_decision_log_dropped``
metric) instead of the server's memory growing; decisions are served either way. The file
is reopened when it was moved or removed (``logrotate`` without ``copytruncate``), as
:class:`logging.handlers.WatchedFileHandler` does.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
import os
import re
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from adapters.log_index import BlockIndex
from engine.ports import DecisionLogUnavailable
from engine.records import is_log_entry, pseudonym, sampled

log = logging.getLogger(__name__)


MAX_QUEUED = 100_000
"""Lines waiting for the writer, at most (then new ones are dropped and counted)."""

_CURSOR = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
"""A Redis stream entry id (what ``FILE.forgotten`` keeps)."""

PREFIX_BLOCKS_PER_TURN = 8
"""Blocks of what a log held before this process opened it indexed per turn of the
writer (a turn every ``flush_seconds``; ~4 ms a block: a 600 MB file in about 40 s at the
default half second, ~6% of a core meanwhile)."""

_CHUNK_BYTES = 1 << 20
"""Encoded lines the writer gathers before one write (it writes what it has at the end
of each turn anyway)."""


class JsonlDecisionLog:
    """Appends log entries to a file, one JSON object per line, off the request path.

    A request appends its entry to a deque (no lock, no wake-up); the writer thread takes
    everything waiting every ``flush_seconds`` (at once for a forget or closing), encodes
    it (``msgspec``) and writes it in one call: a busy server pays neither a thread
    handover per line nor ``json.dumps`` (bench/RESULTS.md §35)."""

    def __init__(self, path: str | Path, flush_seconds: float = 0.5,
                 max_queued: int = MAX_QUEUED, sample: float = 1.0) -> None:
        if not 0.0 < sample <= 1.0:  # (NaN refused too)
            raise ValueError(f"the decision log's sample must be above 0 and at most 1, "
                             f"not {sample}")
        self.path = Path(path)
        self.sample = sample
        """The share of decisions logged, with their outcomes
        (:func:`~engine.records.sampled`)."""
        self._waiting: collections.deque[dict[str, Any] | _Forget | None] = (
            collections.deque())
        self._max_queued = max_queued
        self._wake = threading.Event()  # a forget or closing: take what waits now
        self._flush_seconds = flush_seconds
        self._encode = msgspec.json.Encoder().encode
        self._file = self.path.open("ab")
        self._index = BlockIndex(os.fstat(self._file.fileno()).st_size)
        """Which stretches of the file may hold a user's lines (a forget reads those)."""
        self._reopen_failed = False
        self.dropped = 0
        """Lines dropped: the writer was behind by ``max_queued``, or the file could not
        be written (a full disk)."""
        self._cursor_file = self.path.with_name(self.path.name + ".forgotten")
        self.forget_cursor = self._kept_cursor()
        """Where this log's erasures of users forgotten by other processes reached (kept
        in ``FILE.forgotten`` next to the log, so a restarted process carries on)."""
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def unindexed(self) -> int:
        """Bytes of what the file held when this process opened it that are not indexed
        yet (a forget reads them whole; the writer indexes them a few blocks a turn)."""
        return self._index.unindexed

    def keeps(self, decision_id: str) -> bool:
        return sampled(decision_id, self.sample)

    def write(self, entry: dict[str, Any]) -> None:
        if len(self._waiting) >= self._max_queued:
            self._drop("the writer is behind")
            return
        self._waiting.append(entry)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped in (1, 10) or self.dropped % 10_000 == 0:
            log.warning("decision log: %s; %d lines dropped so far", why, self.dropped)

    def _write(self, chunk: bytearray, lines: int) -> None:
        if not chunk:
            return
        try:
            self._file.write(chunk)
            self._file.flush()
        except OSError as err:  # a full or failing disk: the writer goes on
            for _ in range(lines):
                self._drop(f"the file cannot be written ({err})")
        written = self._index.end + len(chunk)
        chunk.clear()
        self._indexed(written)

    def _indexed(self, expected: int) -> None:
        """The index follows the file when its size is what this writer made it; else
        (a write that failed part way, a file cut by someone else) all it holds is
        unindexed: read whole by a forget until the writer has indexed it again."""
        try:
            size = os.fstat(self._file.fileno()).st_size
        except OSError:  # (the file closed under us: indexed anew when reopened)
            return
        if size == expected:
            self._index.written(size)
        else:
            self._index = BlockIndex(size)

    def _run(self) -> None:
        waiting, chunk, lines = self._waiting, bytearray(), 0
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            self._reopen_if_moved()
            while waiting:
                entry = waiting.popleft()
                if entry is None:  # closing: what was written before it is written
                    self._write(chunk, lines)
                    return
                if isinstance(entry, _Forget):  # after the lines before it, with the
                    self._write(chunk, lines)   # forgets right behind it: one pass
                    lines, batch = 0, [entry]
                    while waiting and isinstance(waiting[0], _Forget):
                        batch.append(cast(_Forget, waiting.popleft()))
                    self._forget(batch)
                    continue
                try:
                    chunk += self._encode(entry)
                except (TypeError, ValueError, msgspec.EncodeError):
                    log.exception("decision log entry could not be encoded")
                    continue
                chunk += b"\n"
                self._index.add(entry.get("user_id"))
                lines += 1
                if len(chunk) >= _CHUNK_BYTES:
                    self._write(chunk, lines)
                    lines = 0
            self._write(chunk, lines)
            lines = 0
            self._index_some()

    def _index_some(self) -> None:
        """A little more of what the file held before this process opened it indexed
        (:data:`PREFIX_BLOCKS_PER_TURN` blocks a turn, so a restart's forgets soon read
        only the blocks that may hold their users)."""
        for _ in range(PREFIX_BLOCKS_PER_TURN):
            if not self._index.unindexed:
                return
            try:
                self._index.index_some(self.path)
            except OSError as err:  # (unreadable now: a forget reads it whole)
                log.warning("decision log: cannot index %s (%s)", self.path, err)
                self._index.stop_indexing()
                return

    def _reopen_if_moved(self) -> None:
        """A new file at the path when the one written was moved or removed (rotated)."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        except OSError:  # (its folder unreadable now): write on to the file we have
            return
        written = os.fstat(self._file.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (written.st_dev,
                                                                    written.st_ino):
            try:
                fresh = self.path.open("ab")
            except OSError as err:  # (its folder gone, a folder in its place): write on
                if not self._reopen_failed:  # to the moved file, say so once
                    log.warning("decision log: cannot open a new %s (%s); writing on to "
                                "the file that was there", self.path, err)
                self._reopen_failed = True
                return
            self._reopen_failed = False
            self._file.close()
            self._file = fresh
            self._index = BlockIndex(os.fstat(fresh.fileno()).st_size)

    def forget(self, user_id: str, timeout: float = 60.0) -> int:
        """Erase every line about ``user_id`` (its decisions and their outcomes) from the
        file, after everything queued before is written; returns the lines erased (of all
        the users forgotten in the same pass: forgets queued together share one). Raises
        DecisionLogUnavailable when the file could not be read or written, TimeoutError
        when it took longer than ``timeout``."""
        request = _Forget(user_id)
        self._waiting.append(request)  # never dropped
        self._wake.set()
        if not request.done.wait(timeout):
            raise TimeoutError("the decision log did not compact in time")
        if request.error is not None:
            raise DecisionLogUnavailable(f"the decision log's lines about the user could not "
                                         f"be erased: {request.error}")
        return request.removed

    def forget_pseudonyms(self, pseudonyms: Collection[str], cursor: str) -> None:
        """Queue the erasure of every line about the users with these pseudonyms (forgotten
        by another process sharing the store), behind the lines queued before; then keep
        ``cursor`` in ``FILE.forgotten`` (not when the erasure failed: a restarted process
        tries again)."""
        self._waiting.append(_Forget(None, frozenset(pseudonyms), cursor))  # never dropped
        self._wake.set()

    def _forget(self, batch: list[_Forget]) -> None:
        removed, error = 0, None
        users = {request.user_id for request in batch if request.user_id is not None}
        hashed = frozenset().union(*(request.pseudonyms for request in batch))
        try:
            if users or hashed:
                removed = erase_users(self.path, users, hashed, self._ranges(users, hashed))
            cursors = [request.cursor for request in batch if request.cursor is not None]
            if cursors:
                self._keep_cursor(cursors[-1])
        except Exception as err:  # the writer goes on; each caller is told
            log.exception("decision log: forgetting %d user(s) failed", len(batch))
            error = f"{type(err).__name__}: {err}"
        for request in batch:
            request.removed, request.error = removed, error
            request.done.set()

    def _ranges(self, users: Collection[str], hashed: Collection[str]
                ) -> list[tuple[int, int]]:
        """The stretches of the file that may hold lines about these users (by id or by
        pseudonym), as the index says; the whole file if it is not as this writer left
        it."""
        index = self._index
        if os.stat(self.path).st_size != index.end:  # (someone else wrote or cut it)
            index = self._index = BlockIndex(os.stat(self.path).st_size)
        return index.ranges({*hashed, *(pseudonym(user) for user in users)})

    def _kept_cursor(self) -> str:
        """``FILE.forgotten``'s stream position; "" when there is none (or not one)."""
        try:
            cursor = self._cursor_file.read_text().strip()
        except (OSError, UnicodeDecodeError):  # (none yet, or unreadable)
            return ""
        if cursor and not _CURSOR.fullmatch(cursor):
            log.warning("decision log: %s does not hold a stream position; following "
                        "forgets from now on", self._cursor_file)
            return ""
        return cursor

    def _keep_cursor(self, cursor: str) -> None:
        """Replace ``FILE.forgotten`` with the cursor (whole or not at all)."""
        partial = self._cursor_file.with_name(self._cursor_file.name + ".tmp")
        partial.write_text(cursor + "\n")
        os.replace(partial, self._cursor_file)
        self.forget_cursor = cursor

    def close(self) -> None:
        """Write everything queued, then close the file."""
        self._waiting.append(None)
        self._wake.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.warning("decision log: the writer did not drain in time; closing")
        try:
            self._file.close()
        except OSError as err:  # what was still buffered is lost; closing goes on
            self._drop(f"the file cannot be written ({err})")


class _Forget:
    """A request, queued behind the writes, to erase a user's lines (by id, or by the
    pseudonyms another process forgot, with the cursor to keep after them)."""

    def __init__(self, user_id: str | None, pseudonyms: frozenset[str] = frozenset(),
                 cursor: str | None = None) -> None:
        self.user_id = user_id
        self.pseudonyms = pseudonyms
        self.cursor = cursor
        self.removed = 0
        self.error: str | None = None
        self.done = threading.Event()


_BLOCK = 1 << 20
"""Bytes of the decision log read at a time when erasing users' lines."""


def _field_in(key: str, values: set[bytes], any_value: bool = False) -> re.Pattern[bytes]:
    """What finds a line's string field ``key`` (its JSON-escaped value the group) if it
    may be one of ``values``: the values themselves when they are few (the regex engine
    passes every other line over), else any value (looked up in the set by the caller).

    >>> _field_in("user_id", {b"ann"}).search(b'{"kind":"x","user_id" : "ann"}').group(1)
    b'ann'
    """
    if any_value or len(values) > 64:
        value = rb'(?:[^"\\]|\\.)*'
    else:
        value = b"|".join(re.escape(v) for v in sorted(values))
    return re.compile(rb'"' + key.encode() + rb'"\s*:\s*"(' + value + rb')"')


def erase_users(path: Path, user_ids: str | Collection[str],
                pseudonyms: Collection[str] = (),
                ranges: Sequence[tuple[int, int]] | None = None) -> int:
    """Blank, in place, every line of the log about the users (named by id, or by
    :func:`~engine.records.pseudonym` when another process forgot them): their decisions
    and outcomes, and the outcomes that refer to their decisions (each line's bytes
    overwritten with spaces, its newline kept, then synced; readers skip blank lines).
    Returns how many lines were erased. ``ranges``: only these stretches of whole lines
    (start, end) are read (:class:`~adapters.log_index.BlockIndex` says which may hold
    the users' lines); None: the whole file.

    One pass over the file's bytes, a block at a time, nothing rewritten but the erased
    lines: the regex engine finds the lines whose ``user_id`` is one of theirs (each
    then parsed, to be sure) and those that refer to one of their decisions (an outcome
    is logged after its decision, so its id is known by then); a damaged line is left as
    it is. A million decisions (590 MB): about a second, where rewriting the file
    without them, every line parsed, took 17 (bench/RESULTS.md §35).

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "decisions.jsonl"
    >>> _ = log.write_text('{"kind":"decision","decision_id":"d1","user_id":"ann"}\\n'
    ...                    '{"kind":"decision","decision_id":"d2","user_id":"bob","x":"ann"}\\n'
    ...                    '{"kind":"outcome","decision_id":"d1","outcome":"click"}\\n')
    >>> erase_users(log, "ann"), [json.loads(line)["decision_id"] for line in log.open()
    ...                           if line.strip()]
    (2, ['d2'])
    >>> erase_users(log, (), {pseudonym("bob")}), log.read_text().strip()
    (1, '')
    """
    users = {user_ids} if isinstance(user_ids, str) else set(user_ids)
    hashed = set(pseudonyms)
    if not users and not hashed:
        return 0
    # as lines spell them: escaped to ASCII (json.dumps, before session 17) or UTF-8
    ids = {spelt for user in users for spelt in (json.dumps(user)[1:-1].encode(),
                                                 msgspec.json.encode(user)[1:-1])}
    mentions = _field_in("user_id", ids)
    # by pseudonym: each block's distinct user ids (found by the regex engine) hashed, and
    # those forgotten added to ``ids``, whose own pattern then finds their lines
    any_user = _field_in("user_id", set(), any_value=True)
    hashed_seen: dict[bytes, bool] = {}  # a spelling -> its pseudonym is forgotten

    def forgotten_in(data: bytes, end: int) -> set[bytes]:
        found = set()
        for spelt in set(any_user.findall(data, 0, end)):
            known = hashed_seen.get(spelt)
            if known is None:
                if len(hashed_seen) >= 100_000:  # (bounded, however many users there are)
                    hashed_seen.clear()
                try:  # (most ids need no unescaping)
                    user = (json.loads(b'"' + spelt + b'"') if b"\\" in spelt
                            else spelt.decode())
                except ValueError:
                    user = None
                known = hashed_seen[spelt] = (isinstance(user, str)
                                              and pseudonym(user) in hashed)
            if known:
                found.add(spelt)
        return found

    def theirs(user: object) -> bool:
        return user in users or (isinstance(user, str) and pseudonym(user) in hashed)

    decisions: set[bytes] = set()
    outcomes: re.Pattern[bytes] | None = None  # a line that refers to one of those
    erase: dict[int, int] = {}  # offset -> length of each line to blank
    with path.open("rb") as source:
        for range_start, range_end in (ranges if ranges is not None else [(0, -1)]):
            source.seek(range_start)
            base, carry, left = range_start, b"", range_end - range_start  # (<0: all)
            while True:  # a block of whole lines at a time, scanned by the regex engine
                block = source.read(_BLOCK if left < 0 else min(_BLOCK, left))
                left -= len(block) if left >= 0 else 0
                data = carry + block if carry else block
                end = data.rfind(b"\n") + 1 if block else len(data)  # (the end: a torn line)
                if block and end == 0:  # a line longer than a block: read on
                    carry = data
                    continue
                if hashed:
                    more = forgotten_in(data, end) - ids
                    if more:
                        ids |= more
                        mentions = _field_in("user_id", ids)
                line_start = -1
                for found in mentions.finditer(data, 0, end) if ids else ():
                    start = data.rfind(b"\n", 0, found.start()) + 1
                    if start == line_start or found.group(1) not in ids:  # (twice in a line)
                        continue
                    line_start = start
                    stop = data.find(b"\n", found.end(), end) + 1 or end
                    try:
                        entry = json.loads(data[start:stop])
                    except (ValueError, RecursionError):  # not JSON, or not UTF-8
                        continue
                    if isinstance(entry, dict) and theirs(entry.get("user_id")):
                        erase[base + start] = stop - start
                        if isinstance(entry.get("decision_id"), str):
                            decisions.update((json.dumps(entry["decision_id"])[1:-1].encode(),
                                              msgspec.json.encode(entry["decision_id"])[1:-1]))
                            outcomes = None
                if decisions:
                    if outcomes is None:
                        outcomes = _field_in("decision_id", decisions)
                    for found in outcomes.finditer(data, 0, end):
                        if found.group(1) in decisions:
                            start = data.rfind(b"\n", 0, found.start()) + 1
                            erase[base + start] = (data.find(b"\n", found.end(), end) + 1
                                                   or end) - start
                if not block:
                    break
                carry, base = data[end:], base + end
    if erase:
        fd = os.open(path, os.O_WRONLY)
        try:
            for at, length in erase.items():
                os.pwrite(fd, b" " * (length - 1) + b"\n", at)  # (a torn last line too:
            os.fsync(fd)                                        # it ends the file)
        finally:
            os.close(fd)
    return len(erase)


def iter_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a decision log, in order, one at a time. A line that is torn, not
    JSON, not UTF-8 or not shaped like a log entry is skipped (one warning at the end
    says how many): a damaged log reads as the good lines it still has."""
    skipped = 0
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                entry = None
            if is_log_entry(entry):
                yield entry
            elif line.strip():
                skipped += 1
    if skipped:
        log.warning("decision log %s: %d damaged line(s) skipped", path, skipped)


def iter_logs(paths: Sequence[str | Path]) -> Iterator[dict[str, Any]]:
    """The entries of several logs (one per serving process: a decision's outcomes may
    be in another file than the decision) merged by their time ``at``, each file read
    in the order it was written (nearly time order)."""
    if len(paths) == 1:
        return iter_log(paths[0])
    return heapq.merge(*(iter_log(path) for path in paths), key=_entry_time)


def _entry_time(entry: dict[str, Any]) -> float:
    at = entry.get("at")
    return float(at) if isinstance(at, int | float) else 0.0


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a decision log, in order (small logs and tests; see iter_log)."""
    return list(iter_log(path))
