"""Decisions over the retail ruleset for profiles built to fall in and out of each segment."""

from __future__ import annotations

import pytest

from adapters.memory import MemoryStore
from dsl.loader import load_text
from dsl.ruleset import DEFAULT_MODEL, Ruleset
from engine.requests import InvalidArgument
from engine.service import Arbiter

NOW = 1_800_000_000.0
H = 3600.0
D = 86400.0


@pytest.fixture
def arb(retail: Ruleset) -> Arbiter:
    return Arbiter(retail, MemoryStore(clock=lambda: NOW), seed=7, clock=lambda: NOW)


def track(arb: Arbiter, user: str, event: str, ago: float, value: float = 0.0,
          **traits: object) -> None:
    arb.track(user_id=user, event_type=event, properties={"value": value}, traits=traits,
              at=NOW - ago)


def segments(arb: Arbiter, user: str) -> set[str]:
    return set(arb.decide(user_id=user, placement="homepage_banner", channel="web").segments)


def make_vip(arb: Arbiter, user: str, visits: int = 6, spend: float = 600.0,
             last_purchase_days: float = 5) -> None:
    track(arb, user, "visit", 60 * D)  # a customer for two months: not a new visitor
    track(arb, user, "purchase", last_purchase_days * D, spend, first_name="Vera",
          email_opt_in=True)
    for i in range(visits):
        track(arb, user, "visit", (i + 0.5) * D)


# ---- segments: in and out ------------------------------------------------------------
def test_high_value_loyal_in_and_out(arb: Arbiter) -> None:
    make_vip(arb, "in")
    make_vip(arb, "few_visits", visits=5)
    make_vip(arb, "low_spend", spend=400)
    make_vip(arb, "old_purchase", last_purchase_days=31)
    assert "high_value_loyal" in segments(arb, "in")
    for user in ("few_visits", "low_spend", "old_purchase"):
        assert "high_value_loyal" not in segments(arb, user), user


def test_cart_abandoner_in_and_out(arb: Arbiter) -> None:
    track(arb, "abandoned", "add_to_cart", 25 * H, 80)
    track(arb, "too_recent", "add_to_cart", 2 * H, 80)
    track(arb, "bought", "add_to_cart", 30 * H, 80)
    track(arb, "bought", "purchase", 29 * H, 80)
    track(arb, "stale", "add_to_cart", 15 * D, 80)
    assert "cart_abandoner" in segments(arb, "abandoned")
    for user in ("too_recent", "bought", "stale"):
        assert "cart_abandoner" not in segments(arb, user), user


def test_content_explorer_in_and_out(arb: Arbiter) -> None:
    for i in range(4):
        track(arb, "reader", "content_view", i * 60)
        track(arb, "buyer", "content_view", i * 60)
        track(arb, "slow_reader", "content_view", i * 20 * 60)  # spread over an hour
    track(arb, "buyer", "purchase", 3 * D, 30)
    assert "content_explorer" in segments(arb, "reader")
    assert "content_explorer" not in segments(arb, "buyer")
    assert "content_explorer" not in segments(arb, "slow_reader")


def test_frequent_new_and_lapsed(arb: Arbiter) -> None:
    for i in range(3):
        track(arb, "regular", "visit", (i + 1) * D + 20 * D)
    for i in range(3):
        track(arb, "regular", "visit", (i + 0.5) * D)
    track(arb, "lapsed", "purchase", 120 * D, 50)
    assert {"frequent_visitor"} <= segments(arb, "regular")
    assert "new_visitor" not in segments(arb, "regular")
    assert "new_visitor" in segments(arb, "never-seen")
    assert "lapsed_customer" in segments(arb, "lapsed")
    assert "lapsed_customer" not in segments(arb, "regular")


# ---- actions ------------------------------------------------------------------------
def test_unknown_user_gets_onboarding_on_the_homepage(arb: Arbiter) -> None:
    d = arb.decide(user_id="brand-new-user", placement="homepage_banner", channel="web")
    assert [a.action_id for a in d.actions] == ["onboarding_tour"]
    assert d.actions[0].content["headline"].startswith("Welcome")


def test_cart_abandoner_gets_reminder_then_discount_after_48h(arb: Arbiter) -> None:
    track(arb, "ann", "add_to_cart", 25 * H, 80, first_name="Ann", email_opt_in=True)
    d = arb.decide(user_id="ann", placement="email")
    assert [a.action_id for a in d.actions] == ["cart_reminder", "welcome_series"]
    assert d.actions[0].content["subject"] == "Ann, you left something in your cart"
    track(arb, "bob", "add_to_cart", 50 * H, 80, first_name="Bob", email_opt_in=True)
    d = arb.decide(user_id="bob", placement="email")
    assert d.actions[0].action_id == "cart_discount"
    assert "cart_reminder" in [a.action_id for a in d.actions]


def test_email_needs_opt_in(arb: Arbiter) -> None:
    track(arb, "quiet", "add_to_cart", 25 * H, 80)  # email_opt_in defaults to false
    ids = [a.action_id for a in arb.decide(user_id="quiet", placement="email").actions]
    assert "cart_reminder" not in ids


def test_frequency_cap_stops_an_action_after_its_impressions(arb: Arbiter) -> None:
    track(arb, "ann", "add_to_cart", 25 * H, 80, email_opt_in=True)
    d = arb.decide(user_id="ann", placement="email", explain=True)
    assert d.actions[0].action_id == "cart_reminder"
    arb.feedback(decision_id=d.decision_id, action_id="cart_reminder", outcome="impression")
    d2 = arb.decide(user_id="ann", placement="email", explain=True)
    assert "cart_reminder" not in [a.action_id for a in d2.actions]
    trace = next(t for t in d2.traces if t.action_id == "cart_reminder")
    cap = next(r for r in trace.reasons if r.kind == "cap")
    assert not cap.passed and "1 impressions, cap: 1 per 1d" in cap.detail


def test_cart_page_value_comes_from_context(arb: Arbiter) -> None:
    d = arb.decide(user_id="x", placement="cart_page", channel="web",
                   context={"cart_value": 60.0}, limit=2, explain=True)
    nudge = next(a for a in d.actions if a.action_id == "free_shipping_nudge")
    assert nudge.value == 15.0
    assert nudge.content["message"] == "Add 15 more for free shipping"
    look = next(a for a in d.actions if a.action_id == "complete_the_look")
    assert look.value == pytest.approx(9.0)


def test_experiment_plays_exactly_one_arm_and_records_it(arb: Arbiter) -> None:
    make_vip(arb, "vera")  # eligible for vip_early_access, new_arrivals and free_shipping
    seen = set()
    for _ in range(40):
        d = arb.decide(user_id="vera", placement="homepage_banner", channel="web", limit=3)
        arms = [a for a in d.actions if a.experiment == "hero_test"]
        assert len(arms) == 1
        seen.add(arms[0].arm)
    assert seen == {"vip_early_access", "new_arrivals", "free_shipping"}


def test_clicks_move_the_posterior_and_the_propensity(arb: Arbiter) -> None:
    make_vip(arb, "vera")
    arb.learn()  # her events' cluster features (the retail ruleset clusters customers)
    before = arb.models.predict("new_arrivals", DEFAULT_MODEL, 0.05, {})
    for _ in range(60):
        d = arb.decide(user_id="vera", placement="homepage_banner", channel="web")
        action = d.actions[0]
        arb.feedback(decision_id=d.decision_id, action_id=action.action_id,
                     outcome="impression")
        if action.action_id == "new_arrivals":
            arb.feedback(decision_id=d.decision_id, action_id=action.action_id,
                         outcome="click")
    counts = arb.arm_counts("hero_test")
    assert sum(c.trials for c in counts.values()) == 60
    assert counts["new_arrivals"].successes == counts["new_arrivals"].trials > 0
    d = arb.decide(user_id="vera", placement="homepage_banner", channel="web", explain=True)
    assert d.actions[0].action_id == "new_arrivals"
    terms = d.actions[0].score_terms
    assert terms["posterior_alpha"] == 1 + counts["new_arrivals"].successes
    # Feedback never trains on the request path: the background learner does
    assert arb.models.predict("new_arrivals", DEFAULT_MODEL, 0.05, {}) == before
    assert arb.learn() == 60 + counts["new_arrivals"].successes
    assert arb.models.predict("new_arrivals", DEFAULT_MODEL, 0.05, {}) > before


def test_ties_break_by_priority_then_id() -> None:
    rs = load_text("""
placement p { channels: web  slots: 3 }
action b { placements: p value: 1 }
action a { placements: p value: 1 }
action c { placements: p value: 1 priority: 5 }
""")
    arb = Arbiter(rs, MemoryStore(), seed=1)
    d = arb.decide(user_id="u", placement="p", channel="web")
    assert [a.action_id for a in d.actions] == ["c", "a", "b"]
    assert [a.rank for a in d.actions] == [1, 2, 3]


def test_explain_gives_reasons_for_every_candidate(arb: Arbiter) -> None:
    d = arb.decide(user_id="new", placement="homepage_banner", channel="web", explain=True)
    traced = {t.action_id for t in d.traces}
    assert traced == {a.id for a in arb.ruleset.placements["homepage_banner"].actions}
    vip = next(t for t in d.traces if t.action_id == "vip_early_access")
    assert any(r.kind == "eligibility" and not r.passed and "homepage.arb" in r.location
               for r in vip.reasons)


# ---- bad requests ---------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"user_id": "", "placement": "email"}, "user_id"),
    ({"user_id": "u", "placement": "nope"}, "placement"),
    ({"user_id": "u", "placement": "homepage_banner", "channel": "fax"}, "channel"),
    ({"user_id": "u", "placement": "homepage_banner"}, "channel"),  # two channels: required
    ({"user_id": "u", "placement": "email", "context": {"colour": "red"}}, "context.colour"),
    ({"user_id": "u", "placement": "email", "context": {"cart_value": "lots"}},
     "context.cart_value"),
    ({"user_id": "u", "placement": "email", "context": {"cart_value": float("nan")}},
     "context.cart_value"),
    ({"user_id": "u", "placement": "email", "limit": 1000}, "limit"),
    ({"user_id": "u" * 300, "placement": "email"}, "user_id"),
])
def test_invalid_decide_requests_name_the_field(arb: Arbiter, kwargs: dict[str, object],
                                                field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        arb.decide(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"user_id": "u", "event_type": ""}, "event_type"),
    ({"user_id": "u", "event_type": "bad type!"}, "event_type"),
    ({"user_id": "u", "event_type": "visit", "traits": {"nickname": "x"}}, "traits.nickname"),
    ({"user_id": "u", "event_type": "visit", "traits": {"email_opt_in": "yes"}},
     "traits.email_opt_in"),
    ({"user_id": "u", "event_type": "purchase", "properties": {"value": "12"}},
     "properties.value"),
    ({"user_id": "u", "event_type": "visit", "at": NOW + 86400}, "timestamp"),
])
def test_invalid_track_requests_leave_no_state(arb: Arbiter, kwargs: dict[str, object],
                                               field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        arb.track(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert arb.get_profile("u") is None


def test_a_segment_with_missing_data_is_false_never_unknown() -> None:
    rs = load_text("""
profile { tier: string }
placement p { channels: web }
segment gold = profile.tier == "gold"
segment not_gold = not gold
action a { placements: p value: 1 when: not_gold }
""")
    arb = Arbiter(rs, MemoryStore(), seed=1)
    d = arb.decide(user_id="no-tier", placement="p", explain=True)
    assert d.segments == ("not_gold",)  # gold is false (not unknown): the customer is not gold
    assert [a.action_id for a in d.actions] == ["a"]


def test_fallback_shows_when_nothing_is_eligible(arb: Arbiter) -> None:
    d = arb.decide(user_id="x", placement="cart_page", channel="web", explain=True)
    assert [a.action_id for a in d.actions] == ["popular_picks"]
    assert any(r.kind == "fallback" for r in d.actions[0].reasons)


def test_list_traits_and_consent(arb: Arbiter) -> None:
    track(arb, "c", "visit", 0, consents=["email_marketing"])
    inside = 1_796_036_000.0  # 2026-11-30 10:53 UTC, inside the Black Friday window
    d = arb.decide(user_id="c", placement="email", at=inside, explain=True)
    assert "black_friday" in [a.action_id for a in d.actions]
    bf = next(a for a in d.actions if a.action_id == "black_friday")
    assert bf.tags == ("seasonal", "discount")
    with pytest.raises(InvalidArgument) as info:
        arb.track(user_id="c", event_type="visit", traits={"consents": "email_marketing"})
    assert info.value.field == "traits.consents"


def test_rank_formula_per_placement() -> None:
    rs = load_text("""
placement p { channels: web  slots: 3  rank: action.value * action.weight }
placement q { channels: web  slots: 3  rank: action.priority * 100 + action.value }
action a { placements: p, q value: 3 prior: 0.9 }
action b { placements: p, q value: 5 prior: 0.01 priority: 1 }
action c { placements: p, q value: 4 weight: 2 prior: 0.5 }
""")
    arb = Arbiter(rs, MemoryStore(), seed=1)
    d = arb.decide(user_id="u", placement="p", channel="web", explain=True)
    # propensity does not count here: value x weight is 3, 5, 8
    assert [(a.action_id, a.score) for a in d.actions] == [("c", 8.0), ("b", 5.0), ("a", 3.0)]
    assert any(r.name == "rank" and "action.value * action.weight" in r.detail
               for r in d.actions[0].reasons)
    d = arb.decide(user_id="u", placement="q", channel="web")
    assert [a.action_id for a in d.actions] == ["b", "c", "a"]


# ---- memory: a decision leaves nothing for the cyclic collector -----------------------
def test_decisions_leave_no_reference_cycles(arb: Arbiter) -> None:
    """What a decision builds goes when it does, by reference counting: garbage in a
    cycle waits for the collector, whose passes run during later requests (a decision
    once left eleven such objects: its attributes, events and learnt-cluster reader)."""
    import gc

    make_vip(arb, "vip")
    track(arb, "cart", "add_to_cart", 30 * H, 80.0, first_name="Ann", email_opt_in=True)
    arb.learn()
    requests = [(user, placement, channel, explain)
                for user in ("vip", "cart", "never-seen")
                for placement, channel in (("homepage_banner", "web"), ("email", "email"),
                                           ("cart_page", "web"))
                for explain in (False, True)]
    for user, placement, channel, explain in requests:  # warm: lazily built state
        arb.decide(user_id=user, placement=placement, channel=channel, explain=explain)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            for user, placement, channel, explain in requests:
                arb.decide(user_id=user, placement=placement, channel=channel,
                           explain=explain)
        assert gc.collect() == 0
    finally:
        gc.enable()


SHARED_CAPS = """
placement email { channels: email }
placement web { channels: web }
action a { placements: email, web  group: g  value: 3 }
action b { placements: email, web  group: g  value: 2 }
action c { placements: email, web  value: 1 }
policy {
  group g: at most 2 per 7d
  channel email: at most 3 per 7d
}
"""


@pytest.mark.parametrize("explain", [False, True])
def test_group_and_channel_caps_count_every_action_each_decision(explain: bool) -> None:
    """A group's cap counts its actions' impressions together, a channel's every action's
    on that channel; each decision counts afresh (what the previous one counted is not
    kept), traced or not."""
    arb = Arbiter(load_text(SHARED_CAPS), MemoryStore(), seed=1)

    def shown(placement: str) -> list[str]:
        d = arb.decide(user_id="ann", placement=placement, limit=3, explain=explain)
        return [a.action_id for a in d.actions]

    def impression(placement: str, action_id: str) -> None:
        d = arb.decide(user_id="ann", placement=placement, limit=3)
        arb.feedback(decision_id=d.decision_id, action_id=action_id, outcome="impression")

    assert shown("email") == ["a", "b", "c"]
    impression("web", "a")  # (web: the group counts it, the email channel does not)
    assert shown("email") == ["a", "b", "c"]
    impression("email", "b")
    assert shown("email") == ["c"] and shown("web") == ["c"]  # the group's 2 reached
    impression("email", "c")
    assert shown("email") == ["c"]  # email: 2 of 3
    impression("email", "c")
    assert shown("email") == [] and shown("web") == ["c"]  # email: 3 of 3


@pytest.mark.parametrize("explain", [False, True])
def test_caps_count_contacts_stamped_after_the_decisions_time(explain: bool) -> None:
    """A send recorded by a replica whose clock is a little ahead (or while this decision
    was being made) is stamped after this decision's time: the caps, cooldowns and
    suppressions still count it, since it has happened."""
    rules = SHARED_CAPS.replace("action c { placements: email, web  value: 1 }",
                                "action c { placements: email, web  value: 1  cooldown: 1d }")
    arb = Arbiter(load_text(rules), MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    ahead = NOW + 2.0  # another replica's clock, two seconds ahead of ours
    for action in ("a", "b", "c"):
        d = arb.decide(user_id="ann", placement="email", limit=3, at=ahead)
        arb.feedback(decision_id=d.decision_id, action_id=action, outcome="impression",
                     at=ahead)
    d = arb.decide(user_id="ann", placement="email", limit=3, at=NOW, explain=explain)
    assert not d.actions  # the channel's 3 (and the group's 2, and c's cooldown)
    web = arb.decide(user_id="ann", placement="web", limit=3, at=NOW, explain=explain)
    assert not web.actions  # the group's 2 reached; c in its cooldown


def test_an_event_stamped_a_little_ahead_counts_in_a_window_ending_now() -> None:
    """A purchase stamped 2 s ahead of this server's clock (the shop's clock is ahead) has
    happened: a cart reminder that needs no purchase within the hour is not sent."""
    rules = """
events: purchase
placement email { channels: email }
action cart_reminder {
  placements: email
  value: 1
  when: count(purchase, within=1h) == 0 and sum(purchase.value, within=1h) == 0
}
"""
    arb = Arbiter(load_text(rules), MemoryStore(clock=lambda: NOW), seed=1, clock=lambda: NOW)
    assert [a.action_id for a in arb.decide(user_id="ann", placement="email").actions] == [
        "cart_reminder"]
    arb.track(user_id="ann", event_type="purchase", properties={"value": 40.0}, at=NOW + 2)
    assert not arb.decide(user_id="ann", placement="email").actions
    assert not arb.decide(user_id="ann", placement="email", at=NOW - 120).actions
    # a decision further back (a replay of half an hour ago) does not see it
    assert arb.decide(user_id="ann", placement="email", at=NOW - 30 * 60).actions
