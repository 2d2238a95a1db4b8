"""The JSON-lines decision log: bounded while its writer is behind, and rotation-safe."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from adapters.decision_log import JsonlDecisionLog, iter_log
from adapters.memory import MemoryStore
from dsl.loader import load_path
from engine.grpc.metrics import ServerMetrics
from engine.records import pseudonym, sampled
from engine.service import Arbiter
from tests.conftest import RETAIL, until


def _line(decision_id: str) -> dict[str, Any]:
    return {"kind": "outcome", "decision_id": decision_id, "action_id": "a",
            "outcome": "click", "at": 1.0}


class StuckFile:
    """A file whose writes wait until released (a disk that stalls)."""

    def __init__(self, real: Any) -> None:
        self.real, self.release, self.entered = real, threading.Event(), threading.Event()

    def write(self, data: bytes) -> int:
        self.entered.set()
        self.release.wait(10)
        return int(self.real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_stalled_writer_drops_and_counts_lines_instead_of_growing(tmp_path: Path) -> None:
    log = JsonlDecisionLog(tmp_path / "d.jsonl", flush_seconds=0.05, max_queued=10)
    stuck = StuckFile(log._file)
    log._file = stuck  # type: ignore[assignment]
    for i in range(10):
        log.write(_line(f"d{i}"))
    assert stuck.entered.wait(5)  # the writer took those ten; its write stalls
    for i in range(10, 110):
        log.write(_line(f"d{i}"))
    assert log.dropped == 90  # ten waiting, the rest dropped
    stuck.release.set()
    log.close()
    written = [e["decision_id"] for e in iter_log(tmp_path / "d.jsonl")]
    assert written == [f"d{i}" for i in range(20)]  # the oldest kept, the newest dropped


def test_a_rotated_log_is_reopened_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    log.write(_line("before"))
    time.sleep(0.2)
    path.rename(tmp_path / "d.jsonl.1")  # logrotate's default: move, then a new file
    time.sleep(0.2)
    log.write(_line("after"))
    log.close()
    assert [e["decision_id"] for e in iter_log(tmp_path / "d.jsonl.1")] == ["before"]
    assert [e["decision_id"] for e in iter_log(path)] == ["after"]


def test_dropped_lines_are_a_metric(tmp_path: Path) -> None:
    log = JsonlDecisionLog(tmp_path / "d.jsonl")
    arbiter = Arbiter(load_path(RETAIL), MemoryStore(), seed=1, decision_log=log)
    log.dropped = 3
    try:
        scraped = generate_latest(ServerMetrics(arbiter, None).registry).decode()
        assert "arbiter_decision_log_dropped_total 3.0" in scraped
    finally:
        arbiter.close()


def _decision(decision_id: str, user: str) -> dict[str, Any]:
    return {"kind": "decision", "decision_id": decision_id, "at": 1.0, "user_id": user,
            "placement": "p", "channel": "web", "revision": "r", "context": {"page": user},
            "profile": {}, "holdout": None, "actions": []}


def test_forgets_queued_together_erase_in_one_pass_in_queue_order(tmp_path: Path) -> None:
    """Every forget waits for the lines queued before it; the forgets queued right behind
    one another share one pass over the file (a burst of erasure requests reads it once);
    a line queued after a forget is kept (the customer came back). Erased lines are
    blanked in place: the other lines keep their bytes and offsets."""
    path = tmp_path / "d.jsonl"
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    stuck = StuckFile(log._file)
    log._file = stuck  # type: ignore[assignment]
    for user in ("ann", "bob", "cy", 'd"q'):
        log.write(_decision(f"{user}-1", user))
        log.write(_line(f"{user}-1"))
    assert stuck.entered.wait(5)  # the writer took the eight lines; its write stalls
    results: dict[str, int] = {}
    forgets = [threading.Thread(target=lambda u=u: results.update({u: log.forget(u)}))
               for u in ("ann", 'd"q')]
    for thread in forgets:
        thread.start()
    while len(log._waiting) < 2:
        time.sleep(0.01)
    log.write(_decision("ann-2", "ann"))
    stuck.release.set()
    for thread in forgets:
        thread.join(10)
    log.close()
    assert results == {"ann": 4, 'd"q': 4}  # one pass for both: 2 lines each
    kept = [e["decision_id"] for e in iter_log(path)]
    assert kept == ["bob-1", "bob-1", "cy-1", "cy-1", "ann-2"]
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[0].strip() == b"" and lines[0].endswith(b"\n") and len(lines) == 9


def test_a_failed_erasure_is_reported_and_the_writer_goes_on(tmp_path: Path) -> None:
    """ForgetProfile is told (DecisionLogUnavailable: UNAVAILABLE, retry) instead of
    being answered as if the lines were gone; the writer keeps writing, to the file it
    has while no new one can be opened at the path, then to a new one."""
    import pytest

    from engine.grpc.errors import status_of
    from engine.ports import DecisionLogUnavailable

    path = tmp_path / "d.jsonl"
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    log.write(_decision("ann-1", "ann"))
    time.sleep(0.2)
    path.rename(tmp_path / "moved")
    path.mkdir()  # a folder where the file was: it can be neither read nor reopened
    with pytest.raises(DecisionLogUnavailable) as raised:
        log.forget("ann")
    code, message = status_of(raised.value, "ForgetProfile")
    assert code.name == "UNAVAILABLE" and "retry" in message
    log.write(_line("while"))
    time.sleep(0.2)
    path.rmdir()
    time.sleep(0.2)
    log.write(_line("after"))
    log.close()
    assert [e["decision_id"] for e in iter_log(tmp_path / "moved")] == ["ann-1", "while"]
    assert [e["decision_id"] for e in iter_log(path)] == ["after"]


def test_damaged_and_foreign_lines_survive_an_erasure(tmp_path: Path) -> None:
    """Bytes that are not UTF-8, a torn line, a JSON value that is not an object, and
    another customer's line that merely mentions the user are kept byte for byte."""
    from adapters.decision_log import erase_users

    path = tmp_path / "d.jsonl"
    other = json.dumps(_decision("bob-1", "bob") | {"context": {"page": "ann"}}).encode()
    body = [json.dumps(_decision("ann-1", "ann")).encode(), b'\xff"ann"\xfe', other,
            b'["ann"]', json.dumps(_line("ann-1")).encode(), b'{"user_id":"ann"']
    path.write_bytes(b"\n".join(body))
    assert erase_users(path, "ann") == 2
    after = path.read_bytes().split(b"\n")
    assert [line for line in after if line.strip()] == [body[1], other, body[3], body[5]]


def test_a_user_is_erased_whichever_way_a_build_spelt_their_id(tmp_path: Path) -> None:
    """Lines written before session 17 escape non-ASCII to \\uXXXX (json.dumps); this
    build writes UTF-8 (msgspec). Both are the user's, and so is an outcome of theirs."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_decision("old-1", "zoë")) + "\n")  # (ASCII-escaped)
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    log.write(_decision("new-1", "zoë"))
    log.write(_line("new-1"))
    log.write(_decision("bob-1", "bob"))
    assert log.forget("zoë") == 3
    log.close()
    assert "zoë".encode() not in path.read_bytes() and b"\\u00eb" not in path.read_bytes()
    assert [e["decision_id"] for e in iter_log(path)] == ["bob-1"]


@pytest.mark.parametrize("user", ["zoë", 'a"quoted\\id', "ann"])
def test_another_process_forget_erases_by_pseudonym_however_the_id_was_spelt(
        tmp_path: Path, user: str) -> None:
    """A user forgotten by another process arrives as a pseudonym: their lines (escaped
    or UTF-8, decisions and outcomes) are erased, others' kept, the cursor kept after."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_decision("old-1", user)) + "\n")  # (ASCII-escaped)
    log = JsonlDecisionLog(path, flush_seconds=0.05)
    log.write(_decision("new-1", user))
    log.write({**_line("new-1"), "user_id": user})
    log.write(_decision("bob-1", "bob"))
    log.forget_pseudonyms([pseudonym(user)], "1-0")
    log.close()
    assert [e["decision_id"] for e in iter_log(path)] == ["bob-1"]
    assert (tmp_path / "d.jsonl.forgotten").read_text().strip() == "1-0"
    assert JsonlDecisionLog(path).forget_cursor == "1-0"


def test_a_logged_profile_shows_its_history_as_pairs_and_replays(tmp_path: Path) -> None:
    """Profiles keep their event history packed (bytes); the decision log shows it as
    (timestamp, value) pairs, readable and what `arbiter replay` reads back."""
    import msgspec

    from engine.profiles import recent_events
    from engine.records import Profile

    log = JsonlDecisionLog(tmp_path / "d.jsonl", flush_seconds=0.05)
    arbiter = Arbiter(load_path(RETAIL), MemoryStore(), seed=1, decision_log=log)
    try:
        arbiter.track(user_id="ann", event_type="add_to_cart", at=1_790_000_000.0,
                      properties={"value": 80.0})
        arbiter.decide(user_id="ann", placement="email", at=1_790_100_000.0)
    finally:
        arbiter.close()
        log.close()
    (entry,) = [e for e in iter_log(tmp_path / "d.jsonl") if e["kind"] == "decision"]
    assert entry["profile"]["events"]["add_to_cart"]["recent"] == [[1_790_000_000.0, 80.0]]
    replayed = msgspec.convert(entry["profile"], Profile, strict=False)
    assert recent_events(replayed.events["add_to_cart"]) == [(1_790_000_000.0, 80.0)]


@pytest.mark.parametrize("kept", [b"garbage\n", b"\xff\xfe", b"1-2-3", b""])
def test_a_damaged_cursor_file_follows_forgets_from_now(tmp_path: Path, kept: bytes) -> None:
    """``FILE.forgotten`` that is not a stream position: the log opens (following from
    now, with a warning) rather than the server failing to start."""
    path = tmp_path / "d.jsonl"
    (tmp_path / "d.jsonl.forgotten").write_bytes(kept)
    log = JsonlDecisionLog(path)
    assert log.forget_cursor == ""
    log.close()


def test_erase_log_erases_users_from_rotated_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``arbiter erase-log --user ID FILE...``: the lines ForgetProfile would erase, in
    files rotated away (which it does not touch); a compressed file is refused."""
    from engine.cli.app import main

    rotated = [tmp_path / "d.jsonl.1", tmp_path / "d.jsonl.2"]
    for k, path in enumerate(rotated):
        path.write_text("".join(json.dumps(line) + "\n" for line in (
            _decision(f"a{k}", "ann"), {**_line(f"a{k}"), "user_id": "ann"},
            _decision(f"b{k}", "bob"), _line(f"b{k}"))))
    assert main(["erase-log", "--user", "ann", *map(str, rotated)]) == 0
    assert capsys.readouterr().out.count("2 line(s) erased") == 2
    for path in rotated:
        assert [e["decision_id"] for e in iter_log(path)] == [f"b{rotated.index(path)}"] * 2
    archived = tmp_path / "d.jsonl.3.gz"
    archived.write_bytes(b"\x1f\x8b")
    assert main(["erase-log", "--user", "bob", str(archived), str(rotated[0])]) == 2
    captured = capsys.readouterr()
    assert "compressed" in captured.err and "2 line(s) erased" in captured.out
    assert list(iter_log(rotated[0])) == []


def test_a_sampled_log_keeps_a_share_of_decisions_with_all_their_outcomes(
        tmp_path: Path) -> None:
    """``sample=0.3``: the decisions whose id is in the sample are logged, each with its
    outcomes (whichever process they reach: the choice is the id's); the rest not."""
    path = tmp_path / "d.jsonl"
    arb = Arbiter(load_path(RETAIL), MemoryStore(), seed=1,
                  decision_log=JsonlDecisionLog(path, flush_seconds=0.05, sample=0.3))
    made = []
    for k in range(300):
        d = arb.decide(user_id=f"u{k}", placement="homepage_banner", channel="web")
        arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id,
                     outcome="click")
        made.append(d.decision_id)
    arb.close()
    entries = list(iter_log(path))
    logged = {e["decision_id"] for e in entries if e["kind"] == "decision"}
    assert logged == {d for d in made if sampled(d, 0.3)}
    assert 60 <= len(logged) <= 120
    assert [e["decision_id"] for e in entries if e["kind"] == "outcome"] == [
        d for d in made if d in logged]
    with pytest.raises(ValueError, match="sample"):
        JsonlDecisionLog(tmp_path / "other.jsonl", sample=0.0)


def _entries(users: list[str], first: int) -> list[dict[str, Any]]:
    """A decision and an outcome line per user (ids from ``first``), as the server logs."""
    out: list[dict[str, Any]] = []
    for n, user in enumerate(users, first):
        out.append({"kind": "decision", "decision_id": f"d{n}", "user_id": user,
                    "at": float(n), "placement": "p", "actions": [{"action_id": "a"}]})
        out.append({**_line(f"d{n}"), "user_id": user})
    return out


@pytest.mark.parametrize("by", ["id", "pseudonym"])
def test_a_forget_reads_the_blocks_that_may_hold_the_user_and_erases_all_of_them(
        tmp_path: Path, by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is indexed by blocks as it is written (Bloom filters of the users'
    pseudonyms): a forget reads only the blocks that may hold the user, and erases
    exactly what a pass over the whole file erases: lines written before this process
    opened the file (indexed once, by the first forget), lines of this process in many
    blocks, after a reopen of the same file by a restarted process, and after the file
    was cut by someone else (then read whole)."""
    import random
    import shutil

    import adapters.decision_log as decision_log
    import adapters.log_index as log_index
    from adapters.decision_log import erase_users

    monkeypatch.setattr(log_index, "BLOCK_BYTES", 4096)  # many blocks in a small file
    monkeypatch.setattr(decision_log, "_CHUNK_BYTES", 4096)  # (written a block at a time)
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(400)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(e) + "\n"  # (a file from before: the prefix)
                            for e in _entries(rng.choices(users, k=300), 0)))
    read: list[int] = []
    full_scan = erase_users

    def measured(path_: Path, ids: Any, hashed: Any = (), ranges: Any = None) -> int:
        read.append(sum(end - start for start, end in ranges) if ranges is not None
                    else path_.stat().st_size)
        return full_scan(path_, ids, hashed, ranges)

    monkeypatch.setattr(decision_log, "erase_users", measured)

    def write(log: JsonlDecisionLog, first: int) -> None:
        for entry in _entries(rng.choices(users, k=600), first):
            log.write(entry)

    def forget(log: JsonlDecisionLog, user: str) -> None:
        expected = tmp_path / "expected.jsonl"
        log.forget("nobody-at-all")  # (what was queued is written first)
        shutil.copy(path, expected)
        full_scan(expected, user)
        if by == "id":
            log.forget(user)
        else:
            log.forget_pseudonyms({pseudonym(user)}, "1-0")
            log.forget("nobody-at-all")  # (waits for the pseudonyms' pass before it)
        assert path.read_bytes() == expected.read_bytes()
        assert _lines_about(path, user) == 0

    log = JsonlDecisionLog(path, flush_seconds=0.01)
    assert log.unindexed == path.stat().st_size
    write(log, 1000)
    forget(log, "user-3")  # (what is not indexed yet read whole)
    assert until(lambda: log.unindexed == 0)  # (the writer indexes it as it goes)
    forget(log, "user-5")
    assert read[-1] < path.stat().st_size / 4  # a few blocks
    log.close()
    log = JsonlDecisionLog(path, flush_seconds=0.01)  # a restarted process
    write(log, 5000)
    forget(log, "user-7")
    assert until(lambda: log.unindexed == 0)
    forget(log, "user-11")
    assert read[-1] < path.stat().st_size / 4
    log.close()
    with path.open("r+b") as cut:  # someone else cuts the file (copytruncate, by hand)
        cut.truncate(path.stat().st_size // 2)
    log = JsonlDecisionLog(path, flush_seconds=0.01)
    write(log, 9000)
    forget(log, "user-13")
    with path.open("r+b") as cut:
        cut.truncate(path.stat().st_size - 10)  # ... while this process has it open
    forget(log, "user-17")
    with path.open("r+b") as cut:  # and again, then more lines written after the cut
        cut.truncate(path.stat().st_size // 3)
    write(log, 13000)
    forget(log, "user-19")
    forget(log, "user-23")
    with path.open("a") as other:  # lines another writer added (not indexed: read whole)
        other.write("".join(json.dumps(e) + "\n" for e in _entries(["user-29"], 20000)))
    forget(log, "user-29")
    log.close()


def _lines_about(path: Path, user: str) -> int:
    """Lines about ``user`` (a torn line, where the file was cut, about nobody)."""
    found = 0
    for line in path.read_text().splitlines():
        try:
            found += line.strip() != "" and json.loads(line).get("user_id") == user
        except ValueError:
            continue
    return found


def test_outcome_lines_of_an_older_build_without_their_user_are_still_erased(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outcome line written before session 18 names only its decision: the block
    that holds it is read by every forget, so it is erased with its decision however
    far apart the two are."""
    import adapters.log_index as log_index

    monkeypatch.setattr(log_index, "BLOCK_BYTES", 256)
    filler = [{"kind": "decision", "decision_id": f"f{n}", "user_id": f"other-{n}",
               "at": 1.0} for n in range(20)]
    lines = [{"kind": "decision", "decision_id": "d-ann", "user_id": "ann", "at": 1.0},
             *filler, _line("d-ann"), *filler]  # (the outcome: no user_id)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    log = JsonlDecisionLog(path, flush_seconds=0.01)
    assert until(lambda: log.unindexed == 0)
    assert log.forget("ann") == 2
    assert "d-ann" not in path.read_text()
    log.close()
