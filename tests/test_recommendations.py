"""Recommendations: the items block and catalogue file, recommend() in actions and templates,
learning from TrackEvent and Feedback through the log, the catalogue RPCs, replicas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.memory import MemoryStore
from adapters.redis_store import RedisStore
from dsl.diagnostics import RulesetError
from dsl.formatter import format_text
from dsl.loader import load_sources
from engine.decide.recommend import Recommendations, candidates
from engine.grpc import server
from engine.grpc.gen.arbiter.v1 import decision_pb2 as pb
from engine.grpc.gen.arbiter.v1 import decision_pb2_grpc as pb_grpc
from engine.learning.recommender import MODEL_HISTORY
from engine.records import pseudonym, recent_items
from engine.requests import InvalidArgument
from engine.service import Arbiter

RULES = """
items { name: string  category: string  price: number  tags: list  in_stock: bool = true }
events: view, purchase
profile { first_name: string }
placement shop { channels: web  slots: 1 }
action picks {
  placements: shop
  value: 1
  items: recommend(3, where: item.in_stock and item.price < 100, exclude: purchase within 30d)
  content { list: html "{% for item in recommended %}<li>{{ item.name }}</li>{% end %}" }
}
"""
NOW = 1_780_000_000.0


def _items(n: int = 12) -> str:
    rows = [{"id": f"i{k}", "name": f"Item {k}", "category": "odd" if k % 2 else "even",
             "price": 10.0 * k, "tags": [f"t{k % 3}"]} for k in range(n)]
    return "\n".join(json.dumps(r) for r in rows)


def _arbiter(store: object | None = None, rules: str = RULES, items: str | None = None,
             **kw: object) -> Arbiter:
    rs = load_sources({"r/rules.arb": rules, "r/items.jsonl": _items() if items is None
                       else items})
    return Arbiter(rs, store or MemoryStore(clock=lambda: NOW), seed=1,  # type: ignore[arg-type]
                   clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def _errors(sources: dict[str, str]) -> list[str]:
    with pytest.raises(RulesetError) as err:
        load_sources(sources)
    return [f"{d.pos.file}:{d.pos.line}:{d.pos.column}: {d.message}" for d in err.value.diagnostics]


def _ids(arbiter: Arbiter, user: str) -> list[tuple[str, str]]:
    d = arbiter.decide(user_id=user, placement="shop", channel="web")
    return [(i.item_id, i.reason) for i in d.actions[0].items] if d.actions else []


# ---- the language -----------------------------------------------------------------------
def test_recommend_formats_and_round_trips() -> None:
    text = format_text(RULES)
    assert ("items: recommend(3, where: item.in_stock and item.price < 100, "
            "exclude: purchase within 30d)") in text
    assert format_text(text) == text


@pytest.mark.parametrize(("rules", "expected"), [
    ("events: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2) }",
     "r/rules.arb:3:35: recommend() needs the catalogue's attributes"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2, where: item.colour == \"red\") }",
     "r/rules.arb:4:62: unknown item attribute 'colour'"),
    ("items { name: string }\nevents: view, purchase\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2, exclude: purchsae) }",
     "r/rules.arb:4:64: unknown event 'purchsae'; did you mean 'purchase'?"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(0) }",
     "r/rules.arb:4:35: recommend() returns 1 to 50 items, not 0"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 content { x: \"{% for i in recommended %}{% end %}\" } }",
     "'recommended' is an action's recommended items"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2)\n"
     "  content { x: \"{{ recommended }}\" } }",
     "a content token must be a single value"),
])
def test_recommend_mistakes_are_positioned(rules: str, expected: str) -> None:
    errors = _errors({"r/rules.arb": rules})
    assert any(expected in e for e in errors), errors


def test_catalogue_file_mistakes_point_at_line_and_attribute() -> None:
    items = "\n".join([
        '{"id": "a", "name": "A", "price": 5}',
        '{"id": "b", "name": "B", "price": "cheap"}',
        '{"id": "c", "colour": "red"}',
        "not json",
        '{"id": "a", "name": "again"}',
        '{"name": "no id"}',
    ])
    errors = _errors({"r/rules.arb": RULES, "r/items.jsonl": items})
    assert "r/items.jsonl:2:26: item attribute 'price' must be a number, not a string" in errors
    assert "r/items.jsonl:3:13: item attribute 'colour' is not declared in the items block" \
        in errors
    assert any(e.startswith("r/items.jsonl:4:1: not a JSON object") for e in errors)
    assert "r/items.jsonl:5:2: item 'a' appears twice" in errors
    assert any(e.startswith("r/items.jsonl:6:") and "'id' must be a non-empty" in e
               for e in errors)
    no_block = _errors({"r/rules.arb": "placement p { channels: web }", "r/items.jsonl": items})
    assert "r/items.jsonl:1:1: a catalogue file needs an 'items { ... }' block in the rules " \
        "declaring its attributes" in no_block


def test_a_csv_catalogue_is_read_with_the_schema_types() -> None:
    csv = "id,name,category,price,tags,in_stock\nx1,Shirt,tops,19.5,cotton|summer,false\n"
    rs = load_sources({"r/rules.arb": RULES, "r/items.csv": csv})
    assert rs.catalogue == ({"id": "x1", "name": "Shirt", "category": "tops", "price": 19.5,
                             "tags": ["cotton", "summer"], "in_stock": False},)


# ---- the engine -------------------------------------------------------------------------
def test_a_new_customer_gets_the_popular_items_then_co_occurrence_then_the_model() -> None:
    arb = _arbiter()
    for u in range(40):  # i1 and i3 are bought together; i5 is the most viewed
        arb.track(user_id=f"u{u}", event_type="view", item_id="i5", at=NOW - 100)
        arb.track(user_id=f"u{u}", event_type="view", item_id="i1" if u % 2 else "i2",
                  at=NOW - 90)
        if u % 2:
            arb.track(user_id=f"u{u}", event_type="view", item_id="i3", at=NOW - 80)
    arb.learn()
    assert _ids(arb, "stranger")[0] == ("i5", "popularity")
    arb.track(user_id="ann", event_type="view", item_id="i1", at=NOW - 10)
    arb.learn()
    first = _ids(arb, "ann")
    assert first[0][1] == "co-occurrence" and {"i3", "i5"} <= {i for i, _ in first}
    for item in ("i2", "i4")[: MODEL_HISTORY - 1]:
        arb.track(user_id="ann", event_type="view", item_id=item, at=NOW - 5)
    arb.learn()
    key = pseudonym("ann")
    assert arb.recommender.knows(key)  # the model now scores her best candidates too
    profile = arb.get_profile("ann")
    assert profile is not None
    pool = candidates(Recommendations(arb.catalogue, arb.recommender),
                      recent_items(profile.items, 10), key)
    assert len(pool.found["model"]) > 0


def test_customers_with_no_history_share_one_ranking_that_follows_popularity_and_catalogue(
        ) -> None:
    arb = _arbiter()
    assert _ids(arb, "s1")[0] == ("i0", "catalogue")  # nothing learnt: the catalogue's order
    assert _ids(arb, "s2") == _ids(arb, "s1")
    for u in range(5):
        arb.track(user_id=f"u{u}", event_type="view", item_id="i7", at=NOW - 100)
    arb.learn()
    assert _ids(arb, "s1")[0] == ("i7", "popularity")  # learnt since: the ranking follows
    arb.remove_items(["i7"])
    arb.catalogue_keeper.sync()
    assert "i7" not in {i for i, _ in _ids(arb, "s2")}  # and so does the catalogue


def test_a_where_reading_the_customer_is_evaluated_for_each_customer() -> None:
    """The list for customers with no history is kept only when ``where`` reads nothing
    but the item; a ``where`` that reads the profile is the customer's own."""
    rules = RULES.replace("profile { first_name: string }",
                          "profile { first_name: string  budget: number = 1000 }")
    arb = _arbiter(rules=rules)
    spec = arb.ruleset.actions["picks"].recommend
    assert spec is not None and spec.where_reads_only_items
    budgeted = _arbiter(rules=rules.replace("item.price < 100", "item.price < profile.budget"))
    spec = budgeted.ruleset.actions["picks"].recommend
    assert spec is not None and not spec.where_reads_only_items
    budgeted.track(user_id="thrifty", event_type="view", traits={"budget": 25.0})
    budgeted.track(user_id="lavish", event_type="view", traits={"budget": 1000.0})
    assert {i for i, _ in _ids(budgeted, "lavish")} == {"i0", "i1", "i2"}
    assert {i for i, _ in _ids(budgeted, "thrifty")} == {"i0", "i1", "i2"}  # all under 25
    budgeted.track(user_id="broke", event_type="view", traits={"budget": 15.0})
    assert [i for i, _ in _ids(budgeted, "broke")] == ["i0", "i1"]  # its own budget
    assert len(_ids(budgeted, "lavish")) == 3


def test_where_and_exclusions_filter_the_items() -> None:
    arb = _arbiter(rules=RULES.replace("recommend(3,", "recommend(10,"))
    arb.upsert_items([{"id": "i1", "name": "Sold out", "category": "odd", "price": 10.0,
                       "in_stock": False}])
    arb.track(user_id="bo", event_type="purchase", item_id="i3", at=NOW - 86400)
    arb.track(user_id="bo", event_type="purchase", item_id="i5", at=NOW - 40 * 86400)
    arb.track(user_id="bo", event_type="view", item_id="i7", at=NOW - 60)
    arb.learn()
    items = [i for i, _ in _ids(arb, "bo")]
    assert "i1" not in items  # out of stock
    assert "i3" not in items  # bought within 30 days
    assert "i5" in items  # bought 40 days ago: may be recommended again
    assert all(int(i[1:]) < 10 for i in items)  # price under 100


def test_an_action_with_nothing_to_recommend_is_not_eligible_and_explain_says_why() -> None:
    arb = _arbiter(rules=RULES.replace("item.price < 100", "item.price < 0"))
    d = arb.decide(user_id="x", placement="shop", channel="web", explain=True)
    assert d.actions == ()
    reasons = [r for t in d.traces for r in t.reasons if r.kind == "recommendation"]
    assert reasons and not reasons[0].passed
    assert "no item to recommend where item.in_stock and item.price < 0" in reasons[0].detail


def test_explain_and_the_response_carry_each_item_with_its_reason_and_score() -> None:
    arb = _arbiter()
    d = arb.decide(user_id="x", placement="shop", channel="web", explain=True)
    items = d.actions[0].items
    assert [i.item_id for i in items] == ["i0", "i1", "i2"] and items[0].reason == "catalogue"
    shown = [r for r in d.traces[0].reasons if r.kind == "recommendation"]
    assert [r.name for r in shown] == ["i0", "i1", "i2"]
    assert shown[0].detail.startswith("catalogue, score ") and shown[0].location
    assert "item i0  score=" in d.render()


def test_item_names_are_escaped_in_html_content() -> None:
    items = json.dumps({"id": "evil", "name": "<script>alert(1)</script>", "price": 1.0})
    arb = _arbiter(items=items)
    d = arb.decide(user_id="x", placement="shop", channel="web")
    assert d.actions[0].content["list"] == "<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>"


def test_feedback_on_a_recommended_item_trains_the_recommender() -> None:
    arb = _arbiter()
    d = arb.decide(user_id="cy", placement="shop", channel="web")
    first, second = d.actions[0].items[0].item_id, d.actions[0].items[1].item_id
    before = arb.recommender.interactions
    arb.feedback(decision_id=d.decision_id, action_id="picks", outcome="click", item_id=first)
    # another item of the same action is another interaction, not a reused key
    commit = arb.feedback(decision_id=d.decision_id, action_id="picks", outcome="click",
                          item_id=second)
    assert not commit.duplicate
    arb.learn()
    assert arb.recommender.interactions == before + 2
    profile = arb.get_profile("cy")
    assert profile is not None and [i for _, i, _ in profile.items] == [first, second]
    with pytest.raises(InvalidArgument) as err:
        arb.feedback(decision_id=d.decision_id, action_id="picks", outcome="click",
                     item_id="i11")
    assert err.value.field == "item_id"


def test_catalogue_changes_are_checked_and_removed_items_are_never_recommended() -> None:
    arb = _arbiter()
    with pytest.raises(InvalidArgument) as err:
        arb.upsert_items([{"id": "ok", "price": 3.0}, {"id": "bad", "price": "free"}])
    assert err.value.field == "items[1].price"
    assert "ok" not in arb.catalogue.items  # all or nothing
    arb.remove_items(["i0", "i1"])
    assert [i for i, _ in _ids(arb, "x")] == ["i2", "i3", "i4"]
    arb.upsert_items([{"id": "i1", "name": "Back", "price": 1.0}])
    assert "i1" in [i for i, _ in _ids(arb, "x")]


def test_forget_drops_the_customer_from_the_recommender() -> None:
    arb = _arbiter()
    for item in ("i1", "i2", "i3", "i4"):
        arb.track(user_id="del", event_type="view", item_id=item, at=NOW - 10)
    arb.learn()
    key = pseudonym("del")
    assert arb.recommender.knows(key) and key in arb.recommender.model.u_latents
    arb.forget("del")
    arb.learn()
    assert not arb.recommender.knows(key) and key not in arb.recommender.model.u_latents
    assert arb.get_profile("del") is None


def test_the_recommender_survives_a_restart_through_the_snapshot() -> None:
    store = MemoryStore(clock=lambda: NOW)
    arb = _arbiter(store, snapshot_key=b"k")
    for u in range(10):
        arb.track(user_id=f"u{u}", event_type="view", item_id="i1", at=NOW - 9)
        arb.track(user_id=f"u{u}", event_type="view", item_id="i2", at=NOW - 8)
    arb.learn()
    arb.learner.snapshot()
    again = _arbiter(store, snapshot_key=b"k")
    assert again.recommender.neighbours("i1") == arb.recommender.neighbours("i1") != []
    assert again.recommender.interactions == 20


def test_replicas_share_the_catalogue_and_the_interactions(redis_url: str) -> None:
    a = _arbiter(RedisStore(redis_url, cache_ttl=0))
    b = _arbiter(RedisStore(redis_url, cache_ttl=0))
    a.upsert_items([{"id": "new", "name": "New", "price": 1.0, "category": "odd"}])
    a.remove_items(["i0"])
    b.sync()
    assert "new" in b.catalogue.items and "i0" not in b.catalogue.items
    for u in range(5):
        a.track(user_id=f"u{u}", event_type="view", item_id="i1", at=NOW - 9)
        a.track(user_id=f"u{u}", event_type="view", item_id="i3", at=NOW - 8)
    b.sync()
    assert b.recommender.neighbours("i1")[0][0] == "i3"
    b.forget("u1")  # the forget marker reaches the other replica through the log
    a.sync()
    assert pseudonym("u1") not in a.recommender.users
    d = a.decide(user_id="u2", placement="shop", channel="web")  # a click on an item
    clicked = d.actions[0].items[0].item_id
    a.feedback(decision_id=d.decision_id, action_id="picks", outcome="click", item_id=clicked)
    b.sync()
    profile = b.get_profile("u2")
    assert profile is not None and profile.items[-1][1:] == (clicked, "click")


def test_a_replica_of_a_wiped_catalogue_reads_it_all_again_even_at_its_old_version(
        redis_url: str) -> None:
    """Redis wiped (a restart without persistence): its catalogue versions counted from 1
    again, so after as many changes as a replica had seen the versions matched and the
    replica kept the items the wipe took and never saw the new ones. A version's epoch
    (its high bits, drawn when the version key is created) tells the eras apart."""
    a = _arbiter(RedisStore(redis_url, cache_ttl=0))
    b = _arbiter(RedisStore(redis_url, cache_ttl=0))
    for name in ("old1", "old2", "old3"):
        a.upsert_items([{"id": name, "name": name, "price": 1.0, "category": "odd"}])
    b.sync()
    assert "old3" in b.catalogue.items
    seen = b.catalogue.version
    redis.Redis.from_url(redis_url).flushdb()
    for name in ("new1", "new2", "new3"):  # as many changes as b had seen
        a.upsert_items([{"id": name, "name": name, "price": 1.0, "category": "odd"}])
    assert a.catalogue.version & 0xFFFFFFFF == seen & 0xFFFFFFFF  # (the same count)
    b.sync()
    assert {"new1", "new2", "new3"} <= set(b.catalogue.items)
    assert not {"old1", "old2", "old3"} & set(b.catalogue.items)
    assert list(b.catalogue.items) == list(a.catalogue.items)


# ---- over gRPC --------------------------------------------------------------------------
def test_catalogue_track_decide_and_feedback_over_grpc(tmp_path: Path) -> None:
    arb = _arbiter()
    running = server.start(arb, "127.0.0.1", 0, workers=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        catalogue = pb_grpc.CatalogueServiceStub(channel)
        stub = pb_grpc.DecisionServiceStub(channel)
        answer = catalogue.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(
            id="g1", attributes={"name": pb.Value(string_value="Gift"),
                                 "price": pb.Value(number_value=5.0),
                                 "category": pb.Value(string_value="odd")})]))
        assert answer.items == 13 and answer.version >= 1
        with pytest.raises(grpc.RpcError) as err:
            catalogue.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(
                id="g2", attributes={"price": pb.Value(string_value="free")})]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("items[0].price: must be a number")
        stub.TrackEvent(pb.TrackEventRequest(user_id="gus", event_type="view", item_id="g1"))
        arb.learn()
        d = stub.Decide(pb.DecideRequest(user_id="gus", placement="shop", channel="web"))
        items = d.actions[0].items
        assert len(items) == 3 and all(i.reason and i.item_id for i in items)
        assert {i.reason for i in items} == {"popularity", "content"}  # the gift, like it
        assert items[0].item_id == "g1"  # the one item anyone viewed: the most popular
        stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id="picks",
                                         outcome=pb.OUTCOME_CLICK, item_id=items[0].item_id))
        with pytest.raises(grpc.RpcError) as err:
            stub.Feedback(pb.FeedbackRequest(decision_id=d.decision_id, action_id="picks",
                                             outcome=pb.OUTCOME_CLICK, item_id="nope"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("item_id:")
        removed = catalogue.RemoveItems(pb.RemoveItemsRequest(item_ids=["g1", "g-typo"]))
        assert removed.items == 12 and list(removed.not_found) == ["g-typo"]
    finally:
        channel.close()
        running.stop(grace=0.5)


def test_the_items_command_checks_upserts_and_removes(
        tmp_path: Path, running: server.RunningServer, arbiter: Arbiter,
        capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.app import main
    from tests.conftest import RETAIL

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "price": "9"}\n')
    assert main(["items", "check", str(bad), "--rules", str(RETAIL)]) == 1
    assert "bad.jsonl:1:13: error: item attribute 'price' must be a number" in \
        capsys.readouterr().err
    good = tmp_path / "new.jsonl"
    good.write_text('{"id": "sku-900", "name": "Gift card", "category": "gifts", "price": 50}\n')
    target = f"127.0.0.1:{running.port}"
    assert main(["items", "upsert", str(good), "--target", target]) == 0
    assert arbiter.catalogue.items["sku-900"]["name"] == "Gift card"
    assert main(["items", "upsert", str(bad), "--target", target]) == 1
    assert "INVALID_ARGUMENT: items[0].price" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["items", "remove", "sku-900", "sku-9OO", "--target", target]) == 0
    assert "sku-900" not in arbiter.catalogue.items
    assert ("removed 1 item(s); the catalogue now has 29; not in the catalogue (nothing "
            "removed): sku-9OO") in capsys.readouterr().out  # (it said "removed 2")


def test_the_items_command_keeps_each_call_under_the_request_limit(
        tmp_path: Path, running: server.RunningServer, arbiter: Arbiter,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """1,500 items with long names: 1,000 of them are 2 MB, past the 1 MiB a server takes
    (the upsert failed RESOURCE_EXHAUSTED); now the calls are cut under it. A server that
    cannot be reached is tried again, then the command stops, saying which items."""
    import engine.cli.commands.items as items_command
    from engine.cli.app import main
    from tests.conftest import free_port

    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"id": f"long-{i}", "name": "n" * 2000, "price": 5})
                           + "\n" for i in range(1500)))
    assert main(["items", "upsert", str(big), "--target", f"127.0.0.1:{running.port}"]) == 0
    assert all(f"long-{i}" in arbiter.catalogue.items for i in (0, 999, 1000, 1499))
    capsys.readouterr()
    monkeypatch.setattr(items_command, "RETRIES", 1)
    assert main(["items", "upsert", str(big), "--target", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "(in items 1-" in err and "Traceback" not in err


def test_get_profile_shows_the_item_history_and_the_report_the_recommender(
        stub: pb_grpc.DecisionServiceStub, arbiter: Arbiter) -> None:
    from engine.cli.commands.report import render_models

    for n, item in enumerate(["sku-001", "sku-002", "sku-003"] * 10):
        stub.TrackEvent(pb.TrackEventRequest(user_id=f"r{n % 7}", event_type="page_view",
                                             item_id=item))
    found = stub.GetProfile(pb.GetProfileRequest(user_id="r0"))
    assert [(i.item_id, i.event) for i in found.profile.items][:2] == [
        ("sku-001", "page_view"), ("sku-002", "page_view")]
    report = arbiter.model_report()
    row = next(q for q in report if q.model == "@recommender")
    assert row.examples == 30 and row.metrics["items"] == 3
    assert 0.0 <= row.metrics["hit_rate@10"] <= 1.0
    assert "@recommender" in render_models(report) and "hit_rate@10" in render_models(report)


def test_the_decision_log_keeps_the_recommended_items_and_the_clicks_on_them(
        tmp_path: Path) -> None:
    from adapters.decision_log import JsonlDecisionLog

    path = tmp_path / "decisions.jsonl"
    arb = _arbiter(decision_log=JsonlDecisionLog(path))
    d = arb.decide(user_id="logged", placement="shop", channel="web")
    item = d.actions[0].items[0].item_id
    arb.feedback(decision_id=d.decision_id, action_id="picks", outcome="click", item_id=item)
    arb.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    decision = next(x for x in lines if x.get("decision_id") == d.decision_id
                    and "actions" in x)
    assert [i["item_id"] for i in decision["actions"][0]["items"]] == [
        i.item_id for i in d.actions[0].items]
    outcome = next(x for x in lines if x.get("kind") == "outcome")
    assert outcome["item_id"] == item


def test_a_new_item_reaches_customers_through_its_category_before_anyone_used_it() -> None:
    items = "\n".join(json.dumps({"id": f"s{k}", "name": f"Shoe {k}", "category": "shoes",
                                  "price": 50.0}) for k in range(60))
    arb = _arbiter(items=items)
    arb.upsert_items([{"id": "new-shoe", "name": "New", "category": "shoes", "price": 40.0}])
    arb.track(user_id="fan", event_type="view", item_id="s3", at=NOW - 60)
    arb.learn()
    pool = candidates(Recommendations(arb.catalogue, arb.recommender), ["s3"])
    assert pool.reason("new-shoe") == "content"  # 61st of its category, still a candidate


def test_a_narrow_where_falls_back_to_the_catalogue_in_its_order() -> None:
    items = "\n".join(json.dumps({"id": f"i{k}", "name": f"Item {k}", "category": "c",
                                  "price": 500.0 if k < 350 else 5.0}) for k in range(400))
    arb = _arbiter(items=items)
    for u in range(30):  # what everyone views is expensive
        arb.track(user_id=f"u{u}", event_type="view", item_id=f"i{u}", at=NOW - 60)
    arb.learn()
    found = _ids(arb, "someone")
    assert [i for i, _ in found] == ["i350", "i351", "i352"]  # the only ones under 100
    assert {reason for _, reason in found} == {"catalogue"}


def test_hostile_catalogue_and_item_input_is_refused_and_changes_nothing() -> None:
    arb = _arbiter()
    before = dict(arb.catalogue.items)
    running = server.start(arb, "127.0.0.1", 0, workers=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    catalogue = pb_grpc.CatalogueServiceStub(channel)
    stub = pb_grpc.DecisionServiceStub(channel)

    def refused(call: object, request: object, field: str) -> None:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert err.value.details().startswith(field), err.value.details()

    try:
        refused(catalogue.UpsertItems, pb.UpsertItemsRequest(items=[pb.Item(id="")]),
                "items[0].id")
        refused(catalogue.UpsertItems, pb.UpsertItemsRequest(items=[pb.Item(id="x" * 300)]),
                "items[0].id")
        refused(catalogue.UpsertItems, pb.UpsertItemsRequest(items=[pb.Item(
            id="n", attributes={"price": pb.Value(number_value=float("nan"))})]),
            "items[0].price")
        refused(catalogue.UpsertItems, pb.UpsertItemsRequest(
            items=[pb.Item(id=f"i{k}") for k in range(10_001)]), "items")
        refused(catalogue.RemoveItems, pb.RemoveItemsRequest(item_ids=["ok", ""]),
                "item_ids[1]")
        refused(stub.TrackEvent, pb.TrackEventRequest(user_id="h", event_type="view",
                                                      item_id="y" * 300), "item_id")
        refused(stub.TrackEvent, pb.TrackEventRequest(
            user_id="h", event_type="view",
            properties={"item_id": pb.Value(number_value=3.0)}), "properties.item_id")
        d = stub.Decide(pb.DecideRequest(user_id="h", placement="shop", channel="web"))
        refused(stub.Feedback, pb.FeedbackRequest(
            decision_id=d.decision_id, action_id="picks", outcome=pb.OUTCOME_CLICK,
            item_id="z" * 300), "item_id")
    finally:
        channel.close()
        running.stop(grace=0.5)
    assert arb.catalogue.items == before  # nothing half-applied
    assert arb.get_profile("h") is None  # the refused events stored nothing
    assert arb.recommender.interactions == 0


def test_hostile_catalogue_files_and_stored_items() -> None:
    errors = _errors({"r/rules.arb": RULES, "r/items.jsonl": '{"id": "a", "price": NaN}\n'
                      + '{"id": "b", "tags": ["x", 1]}\n' + '[1, 2]\n'})
    assert "r/items.jsonl:1:13: item attribute 'price' must be a finite number" in errors
    assert "r/items.jsonl:2:13: item attribute 'tags' must be a list of at most 64 strings" \
        in errors
    assert "r/items.jsonl:3:1: each line is one item: a JSON object" in errors
    store = MemoryStore(clock=lambda: NOW)
    arb = _arbiter(store)
    store.change_items({"bad": b"\xc1garbage", "ok": b""}, ())  # damaged in the store
    arb.sync()
    assert "bad" not in arb.catalogue.items  # an item that does not decode is not served
    assert _ids(arb, "x")  # and recommendations go on


@pytest.mark.parametrize(("rules", "expected"), [
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(99999999999999999999) }",
     "recommend() returns 1 to 50 items"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2, exclude: view within 1e9d) }",
     "syntax error"),
    ("items { name: string }\nevents: view\nplacement p { channels: web }\n"
     "action a { placements: p value: 1 items: recommend(2, exclude: view within "
     + "9" * 400 + "d) }", "is too large"),
])
def test_hostile_recommend_literals(rules: str, expected: str) -> None:
    errors = _errors({"r/rules.arb": rules})
    assert any(expected in e for e in errors), errors


def test_the_popular_items_are_ranked_by_decayed_score_ties_in_order_of_first_use() -> None:
    """The ranking of popular items against its definition: sorted by log2 score at a
    common time, most popular first, equal scores in the order items were first seen
    (a stable sort), the best POPULAR_KEPT kept."""
    import random

    from engine.learning.recommender import HALF_LIFE_SECONDS, POPULAR_KEPT, Recommender
    from engine.records import LearningEvent

    rng = random.Random(7)
    for size in (5, 150, 450):
        recommender = Recommender()
        for _ in range(size * 3):
            item = f"i{rng.randrange(size)}"
            at = 1_700_000_000.0 + rng.choice((0.0, 3600.0, 7200.0))  # many equal scores
            recommender.learn(LearningEvent("", "", "view", at, at, item_id=item))
        recommender._refresh_top()
        popularity = recommender.popularity
        expected = sorted(popularity, key=lambda i: popularity[i][0]
                          + popularity[i][1] / HALF_LIFE_SECONDS, reverse=True)
        assert [item for item, _ in recommender._top] == expected[:POPULAR_KEPT]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]),
    st.one_of(st.none(), st.fixed_dictionaries({
        "category": st.sampled_from(["x", "y", None]),
        "tags": st.sampled_from([["t"], ["t", "u"], ["u", "u"], [], None]),
        "price": st.integers(0, 3)})),
    max_size=3), max_size=8), st.sampled_from([1, 2, 64]))
def test_a_catalogue_updated_in_place_is_the_catalogue_built_from_everything(
        deltas: list[dict[str, dict[str, Any] | None]], fold: int) -> None:
    """The keeper changes a catalogue in place when a change replaces (a new price, a new
    category or tags), removes or adds items (an id never seen before, or one back after
    a removal: last), and builds it all only when an item of the file comes back: either
    way, after every change, the same items,
    order, indexes and similar items as built from the file and every change; the
    catalogue it came from unchanged. Its items and each index key's members carry their
    changes beside what they share, folded in past ``fold`` changes: the same either
    way."""
    from unittest import mock

    import engine.decide.ranked_members as ranked_members
    import engine.decide.shared_dict as shared_dict

    with mock.patch.object(shared_dict, "FOLD_AT_LEAST", fold), \
            mock.patch.object(ranked_members, "FOLD_AT_LEAST", fold):
        _updated_in_place_is_built(deltas)


def _updated_in_place_is_built(deltas: list[dict[str, dict[str, Any] | None]]) -> None:
    from engine.decide.catalogue import Catalogue

    base = [{"id": "a", "category": "x", "tags": ["t"], "price": 1},
            {"id": "b", "category": "y", "tags": [], "price": 2}]
    changes: dict[str, Any] = {}
    served = Catalogue.build(base, {})
    for version, delta in enumerate(deltas, 1):
        delta = {k: (None if v is None else {**v, "id": k}) for k, v in delta.items()}
        # as the keeper sorts them: new ids, and ids back after a removal (they go last,
        # as the store's order puts them: out of the changes, then in again; the removed
        # ids not in the file are dropped from them)
        new = {k for k, v in delta.items() if v is not None and k not in ("a", "b")
               and not served.items.knows(k)}
        back = {k for k, v in delta.items() if v is not None and k not in new
                and k not in served.items}
        changes = {k: v for k, v in changes.items() if k not in back}
        for k, v in delta.items():
            if v is None and k not in ("a", "b"):
                changes.pop(k, None)
            else:
                changes[k] = v
        was = (list(served.items.items()), repr(served.by_category), repr(served.by_tag))
        updated = served.updated(delta, version, new, last=back - {"a", "b"})
        assert (updated is None) == bool(back & {"a", "b"})  # (the file's: built anew)
        assert was == (list(served.items.items()), repr(served.by_category),
                       repr(served.by_tag))  # (copy-on-write: the served one untouched)
        served = Catalogue.build(base, changes, version) if updated is None else updated
        built = Catalogue.build(base, changes, version)
        assert list(served.items.items()) == list(built.items.items())
        assert len(served.items) == len(built.items)
        for item_id in "abcdefgh":
            assert (item_id in served.items) == (item_id in built.items)
            assert served.items.get(item_id) == built.items.get(item_id)
        assert served.by_category == built.by_category and served.by_tag == built.by_tag
        for item_id in "abcdefgh":
            assert served.similar(item_id) == built.similar(item_id)
        assert served.version == built.version


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["remove", "add", "back"]), st.integers(0, 40)),
                max_size=40),
       st.integers(0, 30), st.sampled_from([1, 2, 64]))
def test_an_index_keys_members_changed_in_place_are_the_members_sorted_by_rank(
        steps: list[tuple[str, int]], start: int, fold: int) -> None:
    """A category's or tag's members (`RankedMembers`) after any removals, additions at
    any rank (a moved item keeps its rank) and returns: the ids sorted by rank, their
    count, and both ends as a slice of that list says, folded or not; the members they
    came from unchanged."""
    from unittest import mock

    import engine.decide.ranked_members as ranked_members
    from engine.decide.ranked_members import RankedMembers

    held = {f"i{r}": r * 2 for r in range(start)}  # the model: id -> rank
    gone: dict[str, int] = {}
    ranks: dict[str, int] = dict(held)  # (every id's rank, as the catalogue keeps them)

    def one(item_id: str) -> RankedMembers:
        return RankedMembers([item_id], ranks)

    with mock.patch.object(ranked_members, "FOLD_AT_LEAST", fold):
        members = RankedMembers(sorted(held, key=held.__getitem__), ranks) if held else None
        for op, n in steps:
            was = None if members is None else list(members)
            item_id = f"n{n}"
            if op == "remove" and held:
                item_id = sorted(held)[n % len(held)]
                gone[item_id] = held.pop(item_id)
                changed = members.changed(ranks, removed=[item_id]) if members else None
            elif op == "back" and gone:
                item_id = sorted(gone)[n % len(gone)]
                held[item_id] = gone.pop(item_id)
                changed = members.changed(ranks, added=[item_id]) if members else one(item_id)
            elif op == "add" and item_id not in ranks:
                held[item_id] = ranks[item_id] = n * 2 + 1  # (anywhere among the others)
                changed = members.changed(ranks, added=[item_id]) if members else one(item_id)
            else:
                continue
            assert was == (None if members is None else list(members))
            members = changed
            expected = sorted(held, key=held.__getitem__)
            if not expected:
                assert members is None
                continue
            assert members is not None
            assert list(members) == expected and len(members) == len(expected)
            for each in (1, 2, 3):
                ends = members.ends(each)
                assert ends == tuple(expected if len(expected) <= 2 * each + 1
                                     else expected[:each] + expected[-each:])


def test_a_catalogue_builds_anew_when_changed_out_of_line_or_its_ranks_outgrow_it() -> None:
    """Catalogues changed from one build share their items' ranks, handed in turn: a
    change to one that is no longer the latest of its line, or past as many removed
    items' ranks as items (plus a slack), is built anew (None) instead of ordering new
    items by ranks another catalogue holds."""
    from unittest import mock

    import engine.decide.catalogue as catalogue
    from engine.decide.catalogue import Catalogue

    first = Catalogue.build([{"id": "a", "category": "x"}], {})
    second = first.updated({"b": {"id": "b", "category": "x"}}, 1, new={"b"})
    assert second is not None and list(second.by_category["x"]) == ["a", "b"]
    assert first.updated({"c": {"id": "c", "category": "x"}}, 1, new={"c"}) is None
    assert first.updated({"a": {"id": "a", "category": "x", "price": 2}}, 1) is None
    with mock.patch.object(catalogue, "RANKS_SLACK", 0):
        served: Catalogue | None = second
        for n in range(10):  # (a marketplace's churn: one new item, one gone)
            assert served is not None
            served = served.updated({f"n{n}": {"id": f"n{n}", "category": "x"},
                                     ("b" if n == 0 else f"n{n - 1}"): None}, n + 2,
                                    new={f"n{n}"})
            if served is None:
                break
        assert n == 3  # (5 ranks handed for 2 items, more than twice: build it all)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_replica_started_later_serves_the_same_catalogue_in_the_same_order(
        backend: str, request: pytest.FixtureRequest) -> None:
    """Replicas that followed a feed change by change, and one started after it that
    read everything, serve the same items in the same order with the same indexes and
    similar items: the store gives each item the place it was last added at (on Redis
    too when the items hash is no longer kept in insertion order). Before, a fresh
    replica read the items in the hash's order (or, in memory, by their last change)."""
    import random

    import redis

    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
        client.config_set("hash-max-listpack-entries", 0)  # (a hash table, as past 512)
        request.addfinalizer(lambda: client.config_set("hash-max-listpack-entries", 512))
        monkeypatch = request.getfixturevalue("monkeypatch")  # (read 3 items a command:
        monkeypatch.setattr("adapters.redis_store.CATALOGUE_READ_CHUNK", 3)  # many scans)

        def store() -> object:
            return RedisStore(url, cache_ttl=0)
    else:
        shared = MemoryStore(clock=lambda: NOW)

        def store() -> object:
            return shared

    writer, follower = _arbiter(store()), _arbiter(store())
    rng = random.Random(11)
    removed: list[str] = []

    def item(item_id: str) -> dict[str, Any]:
        return {"id": item_id, "name": item_id, "price": float(rng.randrange(1, 90)),
                "category": rng.choice(["odd", "even", "new"]),
                "tags": rng.sample(["t0", "t1", "t2", "sale"], rng.randrange(0, 3))}

    for step in range(80):
        held = sorted(writer.catalogue.items)
        kind = rng.choice(["new", "new", "change", "change", "remove", "back"])
        if kind == "new":
            writer.upsert_items([item(f"n{step}-{k}") for k in range(rng.randrange(1, 4))])
        elif kind == "change":
            writer.upsert_items([item(rng.choice(held))])
        elif kind == "remove" and len(held) > 3:
            gone = rng.choice(held)
            writer.remove_items([gone])
            removed.append(gone)
        elif kind == "back" and removed:
            writer.upsert_items([item(removed.pop(rng.randrange(len(removed))))])
        if rng.random() < 0.3:
            follower.sync()
    follower.sync()
    first = next(i for i in writer.catalogue.items if i.startswith("n"))  # (not the file's:
    writer.remove_items([first])  # gone and back between two syncs of the follower,
    # which still holds it: it goes last)
    writer.upsert_items([item(first)])
    follower.sync()
    later = _arbiter(store())
    for replica in (writer, follower, later):  # (what a keeper keeps beside the file:
        kept = replica.catalogue_keeper._changes  # the items it serves, not every item
        assert {i for i in kept if i.startswith("n")} == {  # ever removed)
            i for i in replica.catalogue.items if i.startswith("n")}
    for replica in (follower, later):
        assert list(replica.catalogue.items.items()) == list(writer.catalogue.items.items())
        assert replica.catalogue.by_category == writer.catalogue.by_category
        assert replica.catalogue.by_tag == writer.catalogue.by_tag
        for item_id in writer.catalogue.items:
            assert replica.catalogue.similar(item_id) == writer.catalogue.similar(item_id)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_replica_behind_a_forgotten_removal_reads_everything_and_drops_the_item(
        backend: str, request: pytest.FixtureRequest) -> None:
    """The store keeps a removal's mark for so many versions; a replica that still has
    the item and is further behind than that gets the whole catalogue (``everything``)
    and serves it without the item, as one that followed every change does."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        stores: list[Any] = [RedisStore(url, cache_ttl=0) for _ in range(2)]
    else:
        stores = [MemoryStore(clock=lambda: NOW)] * 2
    writer, behind = _arbiter(stores[0]), _arbiter(stores[1])
    stores[0].removals_kept = 2
    writer.upsert_items([{"id": "n1", "name": "n", "price": 1.0, "category": "odd"}])
    behind.sync()
    writer.remove_items(["n1", "i3"])
    for price in (2.0, 3.0, 4.0):  # (the removal's marks are gone past 2 versions)
        writer.upsert_items([{"id": "i1", "name": "n", "price": price, "category": "odd"}])
    behind.sync()
    assert "n1" not in behind.catalogue.items and "i3" not in behind.catalogue.items
    assert list(behind.catalogue.items.items()) == list(writer.catalogue.items.items())
    assert behind.catalogue.by_category == writer.catalogue.by_category
