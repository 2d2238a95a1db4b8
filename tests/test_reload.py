"""Serving rules safely: reload on change and on RPC; a broken edit changes nothing served."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_path, read_sources, revision
from engine.grpc import heap, server
from engine.grpc.gen.arbiter.v1 import admin_pb2 as apb
from engine.grpc.gen.arbiter.v1 import admin_pb2_grpc as apb_grpc
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.reloader import RulesetReloader
from engine.service import Arbiter
from tests.conftest import RETAIL

ONBOARDING_VALUE = "  value: 10\n  priority: 10"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    target = tmp_path / "retail"
    shutil.copytree(RETAIL, target)
    return target


def edit(rules: Path, old: str, new: str) -> None:
    path = rules / "homepage.arb"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def onboarding_value(arb: Arbiter) -> float:
    d = arb.decide(user_id="someone-new", placement="homepage_banner", channel="web")
    return d.actions[0].value


def test_reload_swaps_a_good_ruleset_and_rejects_a_broken_one(rules: Path) -> None:
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    first = arb.ruleset.revision
    assert reloader.reload().changed is False

    edit(rules, ONBOARDING_VALUE, "  value: 12\n  priority: 10")
    result = reloader.reload()
    assert (result.accepted, result.changed) == (True, True)
    assert arb.ruleset.revision == result.revision != first
    assert onboarding_value(arb) == 12

    good = arb.ruleset.revision
    edit(rules, "  value: 12\n  priority: 10", "  value: 12\n  priority: 10\n  when: vip_memebrs")
    result = reloader.reload()
    assert not result.accepted
    assert arb.ruleset.revision == good  # still serving the last good one
    assert onboarding_value(arb) == 12
    rendered = result.render()
    assert "homepage.arb:" in rendered and "'when' is set twice" in rendered
    assert "unknown segment 'vip_memebrs'" in rendered
    assert reloader.rejected is result



def test_a_reload_parses_only_the_files_that_changed(rules: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing is most of a build (a 4,000-action file: ~5 s): an edit to one file of a
    large ruleset re-parsed every file. What a reparse would find is what a cached parse
    finds: the same revision, the same diagnostics, a syntax error reported again."""
    import dsl.loader

    parsed: list[str] = []
    real = dsl.loader.parse_text

    def counting(text: str, path: str) -> object:
        parsed.append(Path(path).name)
        return real(text, path)

    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    monkeypatch.setattr(dsl.loader, "parse_text", counting)
    edit(rules, ONBOARDING_VALUE, "  value: 12")
    result = reloader.reload()
    assert result.accepted and parsed == ["homepage.arb"] and onboarding_value(arb) == 12
    parsed.clear()
    (rules / "zz.arb").write_text("segment broken = \n")  # a syntax error in a new file
    first = reloader.reload()
    again = reloader.reload()  # (nothing changed: not even the new file is parsed again)
    assert not first.accepted and parsed == ["zz.arb"]
    assert "zz.arb:1:17: error: syntax error" in first.render()
    parsed.clear()
    from dsl.loader import build
    rebuilt = build(read_sources(rules))  # from the cache: the same verdict
    assert parsed == [] and [d.render(rebuilt.sources) for d in rebuilt.diagnostics] == [
        d.render(rebuilt.sources) for d in first.diagnostics] and again.changed is False


def test_a_rule_file_that_is_not_utf8_is_an_error_at_its_byte(
        rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Windows editor saving "Montréal" in cp1252: `arbiter check` said only "'utf-8'
    codec can't decode byte 0xe9 in position 34" (which file?), `arbiter report --rules`
    crashed; now it is an error at the file, line and column, and a reload rejects it."""
    from engine.cli import main

    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    serving = arb.ruleset.revision
    (rules / "city.arb").write_bytes(
        '\n# the cities\nsegment quebec = context.page == "Montréal"\n'.encode("cp1252"))
    result = reloader.reload()
    assert not result.accepted and arb.ruleset.revision == serving
    where = f"{rules / 'city.arb'}:3:40: error: not UTF-8 text (byte 0xe9): save the file as UTF-8"
    assert result.render().startswith(where)
    for command in (["check", str(rules)], ["test", str(rules)], ["fmt", str(rules)],
                    ["report", "--redis", "redis://127.0.0.1:1", "--rules", str(rules)]):
        assert main(command) in (1, 2), command
        assert where in capsys.readouterr().err, command

def test_poll_notices_changed_and_new_files(rules: Path) -> None:
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    assert reloader.poll() is None
    (rules / "extra.arb").write_text("action spare { placements: email value: 1 }\n")
    result = reloader.poll()
    assert result is not None and result.changed
    assert "spare" in arb.ruleset.actions


@pytest.fixture
def served(rules: Path) -> Iterator[tuple[server.RunningServer, grpc.Channel]]:
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    running = server.start(arb, "127.0.0.1", 0, reloader=RulesetReloader(rules, arb),
                           reload_interval=0.1)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel
    channel.close()
    running.stop(grace=0.5)


def wait_for(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_broken_edit_pushed_to_a_running_server_changes_nothing_and_says_why(
        rules: Path, served: tuple[server.RunningServer, grpc.Channel]) -> None:
    _running, channel = served
    stub = pb_grpc.DecisionServiceStub(channel)
    admin = apb_grpc.AdminServiceStub(channel)
    request = pb.DecideRequest(user_id="new", placement="homepage_banner", channel="web")
    before = stub.Decide(request)

    edit(rules, ONBOARDING_VALUE, "  value: 15\n  priority: 10")  # picked up by the watcher
    wait_for(lambda: stub.Decide(request).ruleset_revision != before.ruleset_revision)
    after = stub.Decide(request)
    assert after.actions[0].value == 15
    info = admin.GetRuleset(apb.GetRulesetRequest())
    assert info.revision == after.ruleset_revision and not info.rejected_revision

    edit(rules, "  value: 15\n", "  value: \"fifteen\n")  # unterminated string
    wait_for(lambda: admin.GetRuleset(apb.GetRulesetRequest()).rejected_revision)
    info = admin.GetRuleset(apb.GetRulesetRequest())
    assert info.revision == after.ruleset_revision
    diag = info.rejected_diagnostics[0]
    assert diag.file.endswith("homepage.arb") and diag.line > 0 and diag.column > 0
    assert diag.rendered.splitlines()[-1].strip() == "^"
    still = stub.Decide(request)
    assert (still.ruleset_revision, still.actions[0].value) == (after.ruleset_revision, 15)

    reply = admin.ReloadRuleset(apb.ReloadRulesetRequest())
    assert not reply.accepted and reply.diagnostics[0].severity == "error"
    assert reply.serving.revision == after.ruleset_revision


def test_reload_rpc_without_a_directory_is_failed_precondition(
        stub: pb_grpc.DecisionServiceStub, running: server.RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        admin = apb_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            admin.ReloadRuleset(apb.ReloadRulesetRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert admin.GetRuleset(apb.GetRulesetRequest()).revision


def test_decisions_never_fail_or_mix_rulesets_during_reloads(rules: Path) -> None:
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    revisions: dict[str, float] = {arb.ruleset.revision: 10.0}
    errors: list[BaseException] = []
    stop = threading.Event()

    def decide() -> None:
        while not stop.is_set():
            try:
                d = arb.decide(user_id="n", placement="homepage_banner", channel="web")
                expected = revisions.get(d.revision)
                if expected is None or d.actions[0].value != expected:
                    errors.append(AssertionError(f"{d.revision} gave {d.actions[0].value}"))
            except BaseException as err:  # collected, asserted below
                errors.append(err)

    threads = [threading.Thread(target=decide) for _ in range(3)]
    for t in threads:
        t.start()
    value = 10
    for step in range(20):
        new = 11 + step
        # compute the revision a valid edit will have before the swap can serve it
        edit(rules, f"  value: {value}\n  priority: 10", f"  value: {new}\n  priority: 10")
        revisions[revision(read_sources(rules))] = float(new)
        assert reloader.reload().accepted
        value = new
        if step % 5 == 0:  # and a broken edit now and then
            edit(rules, f"  value: {value}\n", f"  value: ({value}\n")
            assert not reloader.reload().accepted
            edit(rules, f"  value: ({value}\n", f"  value: {value}\n")
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_each_swap_settles_the_heap_and_the_replaced_rulesets_cycles_are_collected(
        rules: Path) -> None:
    """The server freezes what it loaded out of later collections (engine.grpc.heap); a
    swap unfreezes, collects and freezes again, so a replaced ruleset does not leak."""
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    reloader = RulesetReloader(rules, arb)
    swaps: list[str] = []
    reloader.on_swap.append(lambda: swaps.append(arb.ruleset.revision))
    reloader.on_swap.append(heap.settle)

    class Node:
        pass

    try:
        cycle = Node()
        cycle.self = cycle  # type: ignore[attr-defined]
        alive = weakref.ref(cycle)
        heap.settle()
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: full collections no longer walk it
        assert gc.get_freeze_count() > 0

        edit(rules, ONBOARDING_VALUE, "  value: 12\n  priority: 10")
        assert reloader.reload().changed
        assert swaps == [arb.ruleset.revision]
        assert alive() is None  # the swap's settle collected it

        edit(rules, "  value: 12\n  priority: 10", "  value: 12\n  when: nope")
        assert not reloader.reload().accepted
        assert len(swaps) == 1  # a rejected edit swaps nothing
    finally:
        gc.unfreeze()


def test_a_started_server_has_settled_its_heap(rules: Path) -> None:
    arb = Arbiter(load_path(rules), MemoryStore(), seed=1)
    gc.unfreeze()
    running = server.start(arb, port=0, reloader=RulesetReloader(rules, arb))
    try:
        assert gc.get_freeze_count() > 0
        assert heap.settle in running.reloader.on_swap  # type: ignore[union-attr]
    finally:
        running.stop()
        gc.unfreeze()
