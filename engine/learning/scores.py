"""Predictive scores: ``score NAME { label: no purchase within 60d  features: ... }``.

A score learns, online and with delayed labels, what happens to a customer in the window
after a snapshot of their features: ``no EVENT within D`` (churn: 1 when none comes),
``EVENT within D`` (1 when one comes) or ``sum(EVENT.value) within D`` (a number).

Snapshots come through the learning log (a TrackEvent's entry carries the features and
the customer's count, total and last time of the score's event, engine.decide.clusters):
every replica applies the same entries in the same order. Each customer has at most one
snapshot awaiting its label per score. It is resolved by the customer's later entries (an
EVENT inside the window: the label is known at once; every EVENT is logged) or, when the
window has passed on the log's own clock (the newest event time applied), from what was
seen. Then the model predicts it (progressive validation: quality is measured before
learning) and learns it: River ``StandardScaler | LogisticRegression`` for labels,
``StandardScaler | LinearRegression`` for targets. A score reads null until it has
learnt :data:`MIN_LABELS` labels. ForgetProfile drops the customer's waiting snapshot.

>>> from dsl.ruleset import ScoreSpec
>>> from dsl.ast import Pos
>>> spec = ScoreSpec("churn", ("visits",), (), "none", "purchase", 10.0, "", Pos("x", 1, 1))
>>> models = ScoreModels()
>>> models.pending_count(spec)
0
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import linear_model, metrics, optim, preprocessing, utils

from dsl.ruleset import ScoreSpec
from engine.learning.quality import RollingQuality

MIN_LABELS = 30
"""Labels a score learns before rules read it (null until then)."""
MAX_PENDING = 200_000
"""Snapshots awaiting their label per score, at most (new ones are skipped beyond it)."""
QUALITY_WINDOW = 1000


Waiting = tuple[float, tuple[float | None, ...], float, float]
"""A customer's snapshot awaiting its label: (when, the features' values in
``spec.features`` order with None for an unknown one, the score's EVENT total then, the
total seen so far inside the window).

A plain tuple of numbers on purpose: the cyclic collector stops tracking such a tuple
once it has seen that nothing in it is tracked (the inner tuple at its first look, the
outer at the same or the next), whereas an object stays tracked, and every full collection
walked the up to :data:`MAX_PENDING` of them per score (in a served process, nearly all
of what it tracked: 58 ms per full collection at 100,000 waiting customers;
bench/RESULTS.md §34)."""


@dataclass
class _Pending:
    """A waiting snapshot as snapshots written before :data:`Waiting` kept them (read
    from an older snapshot, then converted)."""

    at: float
    features: dict[str, float]
    base_total: float
    total: float


class _Score:
    def __init__(self, spec: ScoreSpec) -> None:
        self.key = spec.key()
        if spec.binary:
            learner: Any = linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
        else:
            learner = linear_model.LinearRegression(optimizer=optim.SGD(0.01),
                                                    intercept_lr=0.05)
        self.model = preprocessing.StandardScaler() | learner
        self.pending: OrderedDict[str, Waiting] = OrderedDict()
        self.labels = 0
        self.positives = 0
        self.quality = RollingQuality()  # labels: AUC, log loss, calibration
        self.mae: Any = utils.Rolling(metrics.MAE, window_size=QUALITY_WINDOW)  # targets
        self.mean_target: Any = utils.Rolling(metrics.MAE, window_size=QUALITY_WINDOW)  # |y - 0|
        self._fast: tuple[int, float, list[tuple[float, float, float]]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fast": None}  # a cache: rebuilt on the first read

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fast = None  # (a snapshot from an older version kept another shape)
        names = self.key[0]  # the features, in order (ScoreSpec.key)
        for user, waiting in self.pending.items():
            if isinstance(waiting, _Pending):  # an older snapshot's
                self.pending[user] = (waiting.at,
                                      tuple(waiting.features.get(f) for f in names),
                                      waiting.base_total, waiting.total)

    def fast(self, spec: ScoreSpec) -> tuple[int, float, list[tuple[float, float, float]]]:
        """A copy of the scaler's and the regression's parameters (mean, deviation,
        weight per feature, in ``spec.features`` order), kept until the next label (a
        decision does not walk River's pipeline). Rebuilt under the models' lock."""
        fast = self._fast
        if fast is None or fast[0] != self.labels:
            scaler, regression = self.model.steps.values()
            weights = regression._weights
            fast = self._fast = (self.labels, float(regression.intercept), [
                (float(scaler.means.get(f, 0.0)), float(scaler.vars.get(f, 0.0)) ** 0.5,
                 float(weights.get(f, 0.0))) for f in spec.features])
        return fast

    @staticmethod
    def fast_predict(spec: ScoreSpec, fast: tuple[int, float, list[tuple[float, float, float]]],
                     values: Sequence[float | None]) -> float:
        """:meth:`predict` from :meth:`fast` and the features' values in order (an unknown
        one, or one without spread yet, adds nothing)."""
        _, z, params = fast
        for value, (mean, sd, weight) in zip(values, params, strict=True):
            if value is not None and sd:
                z += weight * (value - mean) / sd
        if spec.binary:
            return 1.0 / (1.0 + math.exp(-max(min(z, 500.0), -500.0)))
        return z

    def predict(self, spec: ScoreSpec, x: Mapping[str, float]) -> float:
        if spec.binary:
            return float(self.model.predict_proba_one(dict(x)).get(True, 0.0))
        return float(self.model.predict_one(dict(x)))

    def resolve(self, spec: ScoreSpec, waiting: Waiting, label: float) -> None:
        """Progressive validation, then learning."""
        x = {name: value for name, value in zip(spec.features, waiting[1], strict=True)
             if value is not None}
        predicted = self.predict(spec, x) if self.labels else (0.5 if spec.binary else 0.0)
        if spec.binary:
            self.quality.update(bool(label), min(max(predicted, 1e-6), 1 - 1e-6))
            self.model.learn_one(x, bool(label))
            self.positives += int(label)
        else:
            self.mae.update(label, predicted)
            self.mean_target.update(label, 0.0)
            self.model.learn_one(x, label)
        self.labels += 1


class ScoreModels:
    """Every score's model and waiting snapshots; thread-safe, picklable."""

    def __init__(self) -> None:
        self._models: dict[str, _Score] = {}
        self._lock = threading.Lock()
        self.clock = 0.0  # the newest event time applied (labels expire on it)

    def __getstate__(self) -> dict[str, Any]:
        return {"_models": self._models, "clock": self.clock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_lock" not in self.__dict__:  # unpickled; else live, adopting a snapshot
            self._lock = threading.Lock()
        with self._lock:
            self._models, self.clock = state["_models"], state["clock"]

    def _model(self, spec: ScoreSpec) -> _Score:
        model = self._models.get(spec.name)
        if model is None or model.key != spec.key():  # new, or its definition changed
            model = self._models[spec.name] = _Score(spec)
        return model

    def learn(self, specs: Mapping[str, ScoreSpec], user: str, at: float,
              snapshot: Mapping[str, float]) -> None:
        """One customer's snapshot (engine.decide.clusters.score_snapshot) at ``at``:
        resolves their waiting snapshot when it can, starts a new one, expires old ones."""
        with self._lock:
            self.clock = max(self.clock, at)
            for spec in specs.values():
                model = self._model(spec)
                event = spec.event
                last = snapshot.get(f"@last:{event}", 0.0)
                total = snapshot.get(f"@total:{event}", 0.0)
                waiting = model.pending.get(user)
                if waiting is not None:
                    since, values, base_total, _ = waiting
                    end = since + spec.window_seconds
                    if since < last <= end:  # the event came inside the window
                        waiting = (since, values, base_total, total)
                        if spec.binary:
                            del model.pending[user]
                            model.resolve(spec, waiting, 1.0 if spec.kind == "any" else 0.0)
                            waiting = None
                        else:  # (the same place in the order)
                            model.pending[user] = waiting
                    if waiting is not None and at > end:  # the window is over
                        del model.pending[user]
                        self._expire(spec, model, waiting)
                        waiting = None
                values = tuple(snapshot.get(f"{spec.name}:{name}") for name in spec.features)
                if (waiting is None and values.count(None) < len(values)
                        and len(model.pending) < MAX_PENDING):
                    model.pending[user] = (at, values, total, total)
                self._expire_before(spec, model, self.clock)

    def _expire(self, spec: ScoreSpec, model: _Score, waiting: Waiting) -> None:
        if spec.binary:  # no event seen inside the window
            model.resolve(spec, waiting, 1.0 if spec.kind == "none" else 0.0)
        else:
            model.resolve(spec, waiting, waiting[3] - waiting[2])

    def _expire_before(self, spec: ScoreSpec, model: _Score, clock: float) -> None:
        """Resolve the waiting snapshots whose window has passed (oldest first)."""
        pending = model.pending
        while pending:
            user, waiting = next(iter(pending.items()))
            if waiting[0] + spec.window_seconds >= clock:
                break
            del pending[user]
            self._expire(spec, model, waiting)

    def forget(self, user: str) -> None:
        with self._lock:
            for model in self._models.values():
                model.pending.pop(user, None)

    def ready(self, spec: ScoreSpec) -> bool:
        """Whether ``spec`` has learnt enough to be read (before: no feature computed)."""
        model = self._models.get(spec.name)
        return model is not None and model.labels >= MIN_LABELS and model.key == spec.key()

    def predict(self, spec: ScoreSpec, x: Mapping[str, float | None]) -> float | None:
        """The score for these features; None until it has learnt MIN_LABELS labels."""
        return self.predict_values(spec, list(map(x.get, spec.features)))

    def predict_values(self, spec: ScoreSpec, values: Sequence[float | None]) -> float | None:
        """:meth:`predict` from the features' values in ``spec.features`` order (a
        decision's path: no lock unless the model learnt since the last read)."""
        model = self._models.get(spec.name)
        if model is None or model.labels < MIN_LABELS or model.key != spec.key():
            return None
        fast = model._fast
        if fast is None or fast[0] != model.labels:
            with self._lock:
                fast = model.fast(spec)
        value = model.fast_predict(spec, fast, values)
        if not math.isfinite(value):
            return None
        return value if spec.binary else max(value, 0.0) if spec.kind == "sum" else value

    def pending_count(self, spec: ScoreSpec) -> int:
        model = self._models.get(spec.name)
        return len(model.pending) if model is not None else 0

    def report(self, specs: Mapping[str, ScoreSpec]
               ) -> list[tuple[str, str, int, RollingQuality | dict[str, float]]]:
        """(name, learner, labels, quality) of every defined score with labels: for a
        label the rolling quality (AUC, log loss, calibration), for a target the metrics."""
        out: list[tuple[str, str, int, RollingQuality | dict[str, float]]] = []
        with self._lock:
            for name, spec in sorted(specs.items()):
                model = self._models.get(name)
                if model is None or model.key != spec.key():
                    continue
                if spec.binary:
                    out.append((name, "logistic", model.labels, model.quality))
                else:
                    out.append((name, "linear", model.labels, {
                        "mae": float(model.mae.get()),
                        "mean_target": float(model.mean_target.get()),
                        "waiting": float(len(model.pending))}))
        return out
