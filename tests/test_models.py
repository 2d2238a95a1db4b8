"""Propensity models from the ruleset: features, learners, per-placement, bagging, quality."""

from __future__ import annotations

import dataclasses
import random

import pytest

from adapters.memory import MemoryStore
from dsl.diagnostics import RulesetError
from dsl.loader import load_text
from dsl.ruleset import ModelSpec
from engine.decide.facts import Facts, features_of
from engine.learning.features import ModelInput, model_features
from engine.learning.models import PropensityModels
from engine.service import Arbiter

RULES = """
profile { spend: number = 0  tier: string = "standard"  vip: bool = false  tags: list
          email: string pii  birth_year: number pii }
context { device: string = "desktop" }
placement home { channels: web  slots: 1 }
segment big = profile.spend > 100
action a { placements: home value: 1 }
action b { placements: home value: 1 }
MODEL
"""


def rules(model: str) -> str:
    return RULES.replace("MODEL", model)


def test_a_number_pii_attribute_can_be_a_feature() -> None:
    """Its values are not names (``profile.birth_year``: one weight), unlike a one-hot."""
    spec = load_text(rules("model on home { features: profile.birth_year }")).model_of("home")
    assert spec.features == ("profile.birth_year",)


def test_declared_features_are_encoded_by_type() -> None:
    rs = load_text(rules("model on home { features: segments, profile.spend, profile.tier, "
                         "profile.vip, profile.tags, context.device }"))
    spec = rs.model_of("home")
    assert spec.features == ("segments", "profile.spend", "profile.tier", "profile.vip",
                             "profile.tags", "context.device")
    facts = Facts({"spend": 150.0, "tier": "gold", "vip": True, "tags": ["x", "y"]},
                  {"device": "mobile"}, {}, {"big": True}, 0.0)
    assert features_of(facts, spec) == {
        "segment:big": 1.0, "profile.spend": 150.0, "profile.tier=gold": 1.0, "profile.vip": 1.0,
        "profile.tags=x": 1.0, "profile.tags=y": 1.0, "context.device=mobile": 1.0}


@pytest.mark.parametrize(("model", "message"), [
    ("model on home { learner: svm }", "unknown learner 'svm': use logistic, adpredictor, tree"),
    ("model on home { features: profile.spnd }", "unknown profile attribute 'spnd'"),
    ("model on home { features: spend }", "a feature is 'segments', 'profile.NAME' or"),
    ("model on home { features: segments, profile.email }",
     "profile.email is personal data (pii) and cannot be a one-hot feature"),
    ("model on home { bagging: 1 }", "bagging takes from 2 to 50 members"),
    ("model on home { vocabulary: 0 }", "vocabulary takes from 1 to 100,000 values"),
    ("model on home { vocabulary: 100001 }", "vocabulary takes from 1 to 100,000 values"),
    ("model on home { hashed: 64  vocabulary: 10 }", "a hashed model is bounded by its"),
    ("model on home { per: user }", "per must be action or placement"),
    ("model on hom { }", "unknown placement 'hom'; did you mean 'home'?"),
    ("model on home { }\nmodel on home { }", "placement 'home' already has a model"),
])
def test_model_errors(model: str, message: str) -> None:
    with pytest.raises(RulesetError) as info:
        load_text(rules(model))
    assert message in info.value.errors[0].message


def train(models: PropensityModels, spec: ModelSpec, n: int = 1500, seed: int = 1) -> None:
    """a is clicked by mobile users (60%) and rarely otherwise (5%)."""
    rng = random.Random(seed)
    for _ in range(n):
        mobile = rng.random() < 0.5
        x = {"context.device=mobile": 1.0} if mobile else {"context.device=desktop": 1.0}
        label = rng.random() < (0.6 if mobile else 0.05)
        predicted = models.learn("a", spec, 0.05, x, label, "home")
        models.record_quality(spec.key("home", "a"), label, predicted)


@pytest.mark.parametrize("learner", ["logistic", "adpredictor", "tree"])
@pytest.mark.parametrize("per", ["action", "placement"])
def test_every_learner_learns_the_signal(learner: str, per: str) -> None:
    spec = ModelSpec(per=per, learner=learner)
    models = PropensityModels()
    assert models.predict("a", spec, 0.05, {"context.device=mobile": 1.0}, "home") == 0.05
    train(models, spec)
    mobile = models.predict("a", spec, 0.05, {"context.device=mobile": 1.0}, "home")
    desktop = models.predict("a", spec, 0.05, {"context.device=desktop": 1.0}, "home")
    assert mobile > desktop + 0.2, (mobile, desktop)
    quality = models.quality()[0]
    assert quality.model == ("a" if per == "action" else "@home")
    assert quality.examples == 1500 and quality.rolling_auc > 0.75
    assert quality.mean_predicted == pytest.approx(quality.observed_rate, abs=0.08)


def test_bagged_members_differ_and_the_bag_learns() -> None:
    spec = ModelSpec(bagging=8)
    models = PropensityModels()
    train(models, spec, n=600)
    x = {"context.device=mobile": 1.0}
    members = {round(models.predict("a", spec, 0.05, x, "home", member=k), 6) for k in range(8)}
    assert len(members) > 1  # Poisson(1) resampling: each member saw other data
    assert models.predict_bag("a", spec, 0.05, x, "home") == [
        models.predict("a", spec, 0.05, x, "home", member=k) for k in range(8)]
    assert models.predict("a", spec, 0.05, x, "home") > 0.3
    assert models.quality()[0].learner == "logistic bagged x8"


def test_a_bag_splits_its_input_once_and_predicts_as_from_a_plain_dict() -> None:
    """The members share the split of one ModelInput into numbers and indicators; each
    predicts what its pipeline predicts from a plain dict (nothing is mutated)."""
    spec = ModelSpec(per="placement", bagging=4)
    models = PropensityModels()
    rng = random.Random(2)
    for _ in range(400):
        x = {"context.device=mobile": 1.0, "profile.spend": rng.uniform(0, 500)}
        models.learn("a", spec, 0.05, x, rng.random() < x["profile.spend"] / 600, "home")
    features = {"context.device=mobile": 1.0, "profile.spend": 420.0}
    model_input = model_features(spec, "a", features)
    assert isinstance(model_input, ModelInput)
    plain = dict(model_input)
    bag = models.predict_bag("a", spec, 0.05, features, "home")
    members = list(models._models[spec.key("home", "a")].learner)
    assert bag == [m.predict_proba_one(dict(plain))[True] for m in members]
    assert len(set(bag)) > 1 and dict(model_input) == plain


@pytest.mark.parametrize("spec", [ModelSpec(), ModelSpec(per="placement"),
                                  ModelSpec(bagging=4), ModelSpec(per="placement", bagging=3)],
                         ids=["action", "placement", "bagged", "placement-bagged"])
def test_the_kept_parameters_predict_exactly_what_rivers_pipeline_predicts(
        spec: ModelSpec) -> None:
    """Decisions predict the default logistic learner from a copy of its parameters
    (engine.learning.linear), copied again after every learn; the same floats as River's
    pipeline, for seen and unseen numbers and indicators, at every stage of training."""
    models = PropensityModels()
    rng = random.Random(5)
    key = spec.key("home", "a")

    def river(x: dict[str, float]) -> list[float]:
        learner = models._models[key].learner
        members = list(learner) if spec.bagging else [learner]
        encoded = model_features(spec, "a", x)
        return [m.predict_proba_one(dict(encoded))[True] for m in members]

    for round_ in range(6):
        for _ in range(40 * (round_ + 1)):
            x = {"context.device=mobile": 1.0, "profile.spend": rng.uniform(0, 500),
                 "segment:big": float(rng.random() < 0.5)}
            models.learn("a", spec, 0.05, x, rng.random() < x["profile.spend"] / 600,
                         "home")
        for _ in range(25):
            x = {f: v for f, v in (("context.device=tablet", 1.0),
                                   ("profile.spend", rng.uniform(-100, 900)),
                                   ("profile.unseen", rng.uniform(0, 9)),
                                   ("segment:big", 1.0)) if rng.random() < 0.7}
            expected = river(x)
            if spec.bagging:
                assert models.predict_bag("a", spec, 0.05, x, "home") == expected
                assert [models.predict("a", spec, 0.05, x, "home", member=k)
                        for k in range(spec.bagging)] == expected
            else:
                assert models.predict("a", spec, 0.05, x, "home") == expected[0]
    assert models._models[key].fast is not None


@pytest.mark.parametrize("spec", [ModelSpec(learner="adpredictor"), ModelSpec(learner="tree"),
                                  ModelSpec(hashed=64)], ids=["adpredictor", "tree", "hashed"])
def test_other_learners_are_predicted_by_river(spec: ModelSpec) -> None:
    models = PropensityModels()
    train(models, spec, n=300)
    model = models._models[spec.key("home", "a")]
    x = {"context.device=mobile": 1.0}
    assert models.predict("a", spec, 0.05, x, "home") == \
        model.learner.predict_proba_one(dict(model_features(spec, "a", x))).get(True, 0.05)
    assert model.parameters() is None


def test_a_pickled_model_keeps_no_parameter_copy() -> None:
    """The copy is a cache: a snapshot does not carry it, and a model pickled before it
    existed (no change counter) loads and predicts."""
    import pickle

    spec = ModelSpec()
    models = PropensityModels()
    train(models, spec, n=200)
    x = {"context.device=mobile": 1.0}
    before = models.predict("a", spec, 0.05, x, "home")
    model = models._models[spec.key("home", "a")]
    assert model.fast is not None
    state = model.__getstate__()
    assert state["fast"] is None
    del state["changes"]  # as an older snapshot holds it
    restored = object.__new__(type(model))
    restored.__setstate__(state)
    assert restored.changes == 0 and restored.fast is None
    models._models[spec.key("home", "a")] = pickle.loads(pickle.dumps(restored))
    assert models.predict("a", spec, 0.05, x, "home") == before


def test_bagged_decisions_log_the_share_of_members() -> None:
    rs = load_text(rules("model on home { features: context.device  bagging: 8 }"))
    arb = Arbiter(rs, MemoryStore(), seed=2)
    rng = random.Random(3)
    shown: set[str] = set()
    for i in range(300):  # a and b both at 0.3 for mobile users
        d = arb.decide(user_id=f"u{i}", placement="home", channel="web",
                       context={"device": "mobile"})
        top = d.actions[0].action_id
        shown.add(top)
        arb.feedback(decision_id=d.decision_id, action_id=top, outcome="impression")
        if rng.random() < 0.3:
            arb.feedback(decision_id=d.decision_id, action_id=top, outcome="click")
        else:
            arb.feedback(decision_id=d.decision_id, action_id=top, outcome="dismiss")
        arb.learn()
    assert shown == {"a", "b"}  # the untried action was explored from its cold-start prior
    for i in range(200):
        d = arb.decide(user_id=f"v{i}", placement="home", channel="web",
                       context={"device": "mobile"})
        assert sum(d.policy.values()) == pytest.approx(1.0)
        assert d.actions[0].probability == d.policy[d.actions[0].action_id]
        assert all(p * 8 == pytest.approx(round(p * 8)) for p in d.policy.values())


def test_model_report_over_the_library() -> None:
    rs = load_text(rules("model on home { per: placement  learner: adpredictor }"))
    arb = Arbiter(rs, MemoryStore(), seed=1)
    d = arb.decide(user_id="u", placement="home", channel="web")
    arb.feedback(decision_id=d.decision_id, action_id=d.actions[0].action_id, outcome="click")
    (quality,) = arb.model_report()
    assert quality.model == "@home" and quality.learner == "adpredictor"
    assert quality.examples == 1


def test_predictions_while_the_learner_learns_are_whole_models() -> None:
    """Decisions read the kept parameters without the lock while the learner thread
    learns: every prediction is a probability, none fails, and once learning stops they
    are River's again."""
    import threading

    spec = ModelSpec(bagging=4)
    models = PropensityModels()
    train(models, spec, n=100)
    stop = threading.Event()
    errors: list[BaseException] = []

    def learn() -> None:
        try:
            train(models, spec, n=1500, seed=9)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            stop.set()

    learner = threading.Thread(target=learn)
    learner.start()
    x = {"context.device=mobile": 1.0, "profile.spend": 50.0}
    seen = 0
    while not stop.is_set():
        for p in models.predict_bag("a", spec, 0.05, x, "home"):
            assert 0.0 <= p <= 1.0
        seen += 1
    learner.join()
    assert not errors and seen > 0
    members = list(models._models[spec.key("home", "a")].learner)
    encoded = dict(model_features(spec, "a", x))
    assert models.predict_bag("a", spec, 0.05, x, "home") == [
        m.predict_proba_one(dict(encoded))[True] for m in members]


# ---- a model's size, bounded whatever the data ------------------------------------------
def page_views(models: PropensityModels, spec: ModelSpec, pages: range) -> None:
    """Clicked on pages divisible by 3, and by mobile users; one example per page."""
    for n in pages:
        x = {f"context.page=/p/{n}": 1.0,
             "context.device=mobile" if n % 2 else "context.device=desktop": 1.0}
        models.learn("a", spec, 0.05, x, n % 3 == 0 or n % 2 == 1, "home")


@pytest.mark.parametrize("spec", [
    ModelSpec(vocabulary=50), ModelSpec(per="placement", vocabulary=50),
    ModelSpec(learner="adpredictor", vocabulary=50), ModelSpec(bagging=4, vocabulary=50)],
    ids=["logistic", "per-placement", "adpredictor", "bagged"])
def test_a_feature_with_ever_new_values_does_not_grow_the_model(spec: ModelSpec) -> None:
    """A string with a new value on every request (a URL, an id) gets weights for its
    first ``vocabulary`` values; the rest share one, so the model, its kept parameters and
    its snapshots stop growing, and what it learns of the other features is kept."""
    import pickle

    models = PropensityModels()
    page_views(models, spec, range(0, 400))
    size = len(models.snapshot())
    page_views(models, spec, range(400, 2400))
    assert len(models.snapshot()) < size * 1.2  # 5x the examples, all new values
    model = models._models[spec.key("home", "a")]
    assert model.vocabulary is not None
    assert model.vocabulary.values["context.page"] == {f"/p/{n}" for n in range(50)}
    if spec.learner == "logistic":
        for member in model.parameters() or ():
            pages = {k for k in member.weights if "context.page=" in str(k)}
            assert len(pages) <= 51 * (2 if spec.per == "placement" else 1)
    # a page never seen reads the shared weight; an admitted page its own
    unseen = models.predict("a", spec, 0.05, {"context.page=/new": 1.0}, "home")
    pooled = models.predict("a", spec, 0.05, {"context.page=(other)": 1.0}, "home")
    assert unseen == pooled
    assert models.predict("a", spec, 0.05, {"context.page=/p/3": 1.0}, "home") != pooled
    mobile = models.predict("a", spec, 0.05, {"context.device=mobile": 1.0}, "home")
    desktop = models.predict("a", spec, 0.05, {"context.device=desktop": 1.0}, "home")
    assert mobile > desktop  # still learns what the bounded features say
    # a replica restored from the snapshot admits and pools the same values
    restored = PropensityModels()
    restored.restore(models.snapshot())
    page_views(models, spec, range(2400, 2500))
    page_views(restored, spec, range(2400, 2500))
    assert pickle.loads(models.snapshot())[spec.key("home", "a")].vocabulary.values == \
        pickle.loads(restored.snapshot())[spec.key("home", "a")].vocabulary.values
    for page in ("/p/7", "/p/2450", "/never"):
        x = {f"context.page={page}": 1.0}
        assert models.predict("a", spec, 0.05, x, "home") == \
            restored.predict("a", spec, 0.05, x, "home")


def test_below_the_limit_values_are_learnt_as_before() -> None:
    """No feature at its limit: the features reach the learner unchanged (the same
    object), so a model predicts exactly as without the bound."""
    models = PropensityModels()
    spec = ModelSpec()
    page_views(models, spec, range(0, 300))
    model = models._models[spec.key("home", "a")]
    x = {"context.page=/p/1": 1.0}
    assert model.vocabulary is not None and not model.vocabulary.full
    assert model.seen(x) is x
    assert models.predict("a", spec, 0.05, {"context.page=/unseen": 1.0}, "home") == \
        models.predict("a", spec, 0.05, {}, "home")  # an unseen value: no weight yet


def test_a_hashed_model_has_no_vocabulary_and_an_older_snapshot_gets_one() -> None:
    models = PropensityModels()
    page_views(models, ModelSpec(hashed=64), range(0, 100))
    assert models._models[ModelSpec(hashed=64).key("home", "a")].vocabulary is None
    page_views(models, ModelSpec(), range(0, 100))
    model = models._models[ModelSpec().key("home", "a")]
    state = model.__getstate__()
    del state["vocabulary"]  # as a snapshot from before the bound holds it
    restored = object.__new__(type(model))
    restored.__setstate__(state)
    assert restored.vocabulary is not None and restored.vocabulary.values == {}


def test_vocabulary_is_set_by_the_model_block_and_changing_it_keeps_what_was_learnt(
        ) -> None:
    """``vocabulary: N`` bounds each one-hot feature at N values; a ruleset that changes
    N keeps the model (its examples and weights), admits again up to the new limit, and
    leaves the values admitted under the old one with their weights."""
    assert load_text(rules("model on home { }")).model_of("home").vocabulary == 1000
    spec = load_text(rules("model on home { features: context.device  vocabulary: 20 }")
                     ).model_of("home")
    assert spec.vocabulary == 20
    models = PropensityModels()
    page_views(models, spec, range(0, 100))
    key = spec.key("home", "a")
    model = models._models[key]
    assert model.vocabulary is not None and len(model.vocabulary.values["context.page"]) == 20
    admitted = models.predict("a", spec, 0.05, {"context.page=/p/3": 1.0}, "home")
    wider = dataclasses.replace(spec, vocabulary=40)
    assert wider == spec  # the same model: the limit is not part of what it is
    page_views(models, wider, range(100, 200))
    model = models._models[key]
    assert model.examples == 200 and model.spec.vocabulary == 40
    assert len(model.vocabulary.values["context.page"]) == 40
    assert "/p/119" in model.vocabulary.values["context.page"]
    assert "/p/120" not in model.vocabulary.values["context.page"]
    assert models.predict("a", wider, 0.05, {"context.page=/p/3": 1.0}, "home") != \
        models.predict("a", wider, 0.05, {"context.page=/p/160": 1.0}, "home")
    assert admitted != 0.05  # it had learnt; it was not reset to the prior
    narrower = dataclasses.replace(spec, vocabulary=5)
    page_views(models, narrower, range(200, 210))
    assert len(model.vocabulary.values["context.page"]) == 40  # none forgotten
    assert model.examples == 210


def test_a_snapshot_from_before_vocabulary_loads_with_the_default() -> None:
    """A model spec pickled with five fields (per, features, learner, bagging, hashed),
    as snapshots were written before ``vocabulary:``, unpickles with the default."""
    import copyreg
    import io
    import pickle

    class OldPickler(pickle.Pickler):
        def reducer_override(self, obj: object) -> object:
            if isinstance(obj, ModelSpec):  # the state the five-field class gave
                return copyreg.__newobj__, (ModelSpec,), [obj.per, obj.features, obj.learner,
                                                          obj.bagging, obj.hashed]
            return NotImplemented

    out = io.BytesIO()
    OldPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(
        ModelSpec(per="placement", bagging=4, vocabulary=7))
    spec = pickle.loads(out.getvalue())
    assert spec == ModelSpec(per="placement", bagging=4)
    assert spec.vocabulary == 1000
