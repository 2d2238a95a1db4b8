"""Learned segments: ``cluster NAME { features: ..., k: N }``, k-means learnt online.

Every ``TrackEvent`` logs the customer's cluster features (computed from the profile as
stored, engine.decide.clusters) to the learning log; each replica applies the log in
order, so they hold the same clusters, snapshotted with the other models. Per cluster
definition:

- features are standardised online (River ``preprocessing.StandardScaler``), a feature
  the customer does not have (null) sits at the mean;
- the first vectors (:data:`INIT_PER_CLUSTER` per cluster) seed the centres with
  k-means++ and Lloyd iterations (River's ``KMeans`` starts from random centres, which
  leaves clusters empty); from then on River's ``cluster.KMeans`` moves the closest
  centre toward each new vector (``halflife`` :data:`HALFLIFE`), and every
  :data:`REFIT_EVERY` vectors the centres are refitted on the most recent
  :data:`WINDOW` (Lloyd from the current centres and from k-means++ restarts, the
  tightest kept): online updates alone stay in the local optimum of the early data;
- clusters are numbered by their centre's first feature, lowest first, so ``names`` read
  in that order and a cluster keeps its number as the centres drift;
- quality: the silhouette on a sample of recent vectors (a reservoir of
  :data:`SAMPLE` vectors, no customer ids) and each cluster's share of recent customers.

>>> from dsl.ruleset import ClusterSpec
>>> from dsl.ast import Pos
>>> spec = ClusterSpec("spend", ("monetary",), (), 2, ("low", "high"), Pos("x", 1, 1))
>>> models = ClusterModels()
>>> for n in range(60):
...     models.learn(spec, {"monetary": 10.0 + n % 3 if n % 2 else 500.0 + n % 5})
>>> models.assign(spec, {"monetary": 12.0}), models.assign(spec, {"monetary": 480.0})
('low', 'high')
"""

from __future__ import annotations

import collections
import math
import random
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import cluster, preprocessing

from dsl.ruleset import ClusterSpec

HALFLIFE = 0.02
"""How far a centre moves toward each vector assigned to it once seeded."""
INIT_PER_CLUSTER = 20
"""Vectors per cluster buffered before the centres are seeded (k-means++)."""
SAMPLE = 400
"""Recent vectors kept (reservoir sampling) for the silhouette."""
RECENT = 1000
"""Recent assignments the cluster sizes are computed over."""
REFIT_EVERY = 500
"""Vectors between two refits of the centres on the recent window."""
WINDOW = 2000
"""Recent vectors (features as learnt, no customer id) the refits use."""
RESTARTS = 3


class _Clustering:
    def __init__(self, spec: ClusterSpec) -> None:
        self.key = spec.key()
        self.features = spec.features
        self.k = spec.k
        self.scaler = preprocessing.StandardScaler()
        self.kmeans = cluster.KMeans(n_clusters=spec.k, halflife=HALFLIFE, seed=len(spec.name))
        self.ready = False
        self.examples = 0
        self.sample: list[np.ndarray] = []
        self.recent: deque[int] = deque(maxlen=RECENT)
        self.window: deque[dict[str, float | None]] = deque(maxlen=WINDOW)
        self.version = 0  # bumped by every change a decision's assignment depends on
        self._fast: tuple[int, list[tuple[float, float]], list[list[float]]] | None = None
        self._rng = random.Random(spec.name)

    def _scaled(self, x: Mapping[str, float | None]) -> dict[str, float]:
        present = {f: v for f, v in x.items() if v is not None}
        scaled = self.scaler.transform_one(present) if present else {}
        return {f: float(scaled.get(f, 0.0)) for f in self.features}

    def learn(self, x: Mapping[str, float | None]) -> None:
        self.version += 1
        present = {f: float(v) for f, v in x.items() if v is not None and f in self.features}
        if present:
            self.scaler.learn_one(present)
        self.examples += 1
        self.window.append(dict(x))
        if not self.ready:
            if len(self.window) >= INIT_PER_CLUSTER * self.k:
                self._refit(seed=True)
            return
        scaled = self._scaled(x)
        self._keep(scaled)
        self.recent.append(self.kmeans.learn_predict_one(scaled))
        if self.examples % REFIT_EVERY == 0:
            self._refit(seed=False)

    def _keep(self, scaled: dict[str, float]) -> None:
        vector = np.array([scaled[f] for f in self.features])
        if len(self.sample) < SAMPLE:
            self.sample.append(vector)
        else:
            j = self._rng.randrange(self.examples)
            if j < SAMPLE:
                self.sample[j] = vector

    def _refit(self, seed: bool) -> None:
        """Lloyd's k-means on the recent window (scaled now), from the current centres
        (unless seeding) and from k-means++ restarts; the lowest inertia wins."""
        data = np.array([[v[f] for f in self.features]
                         for v in (self._scaled(x) for x in self.window)])
        rng = np.random.default_rng(self._rng.randrange(2**32))
        starts = [self._plus_plus(data, rng) for _ in range(RESTARTS)]
        if not seed:
            starts.append(np.array([[self.kmeans.centers[i][f] for f in self.features]
                                    for i in range(self.k)]))
        best, best_inertia = starts[0], float("inf")
        for c in starts:
            c, inertia = _lloyd(data, c)
            if inertia < best_inertia:
                best, best_inertia = c, inertia
        for i in range(self.k):
            self.kmeans.centers[i] = collections.defaultdict(
                float, {f: float(best[i][j]) for j, f in enumerate(self.features)})
        self.version += 1
        if seed:
            for row in data:
                self._keep({f: float(row[j]) for j, f in enumerate(self.features)})
            self.ready = True

    def _plus_plus(self, data: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        centres = [data[rng.integers(len(data))]]
        for _ in range(1, self.k):
            d2 = np.min([((data - c) ** 2).sum(axis=1) for c in centres], axis=0)
            total = d2.sum()
            pick = rng.integers(len(data)) if total <= 0 else rng.choice(len(data), p=d2 / total)
            centres.append(data[pick])
        return np.array(centres)

    def order(self) -> list[int]:
        """Centre ids, lowest first feature first: cluster number i is ``order()[i]``."""
        first = self.features[0]
        return sorted(self.kmeans.centers, key=lambda i: (self.kmeans.centers[i][first], i))

    def assign(self, x: Mapping[str, float | None]) -> int | None:
        """The cluster number of ``x``: River's KMeans' nearest centre (see
        :meth:`nearest`)."""
        if not self.ready:
            return None
        return self.nearest(self.fast(), list(map(x.get, self.features)))

    def fast(self) -> tuple[int, list[tuple[float, float]], list[list[float]]]:
        """A copy of the scaler's statistics and the ordered centres, kept until the next
        change (a decision reads it without walking River's dicts). Rebuilt under the
        models' lock; read without it."""
        fast = self._fast
        if fast is None or fast[0] != self.version:
            scaler = self.scaler
            stats = [(float(scaler.means.get(f, 0.0)), float(scaler.vars.get(f, 0.0)) ** 0.5)
                     for f in self.features]
            centres = [[self.kmeans.centers[c][f] for f in self.features] for c in self.order()]
            fast = self._fast = (self.version, stats, centres)
        return fast

    @staticmethod
    def nearest(fast: tuple[int, list[tuple[float, float]], list[list[float]]],
                values: Sequence[float | None]) -> int:
        """The number of the centre nearest ``values`` (the features in order, scaled by
        the kept statistics; an unknown one at the mean)."""
        _, stats, centres = fast
        scaled = [0.0 if v is None or not sd else (v - mean) / sd
                  for v, (mean, sd) in zip(values, stats, strict=True)]
        best, best_d = 0, math.inf
        for number, centre in enumerate(centres):
            d = math.dist(centre, scaled)  # C; the nearest by the same Euclidean distance
            if d < best_d:
                best, best_d = number, d
        return best

    def report(self) -> dict[str, float]:
        """Silhouette on the sample, each cluster's share of recent customers, centres in
        the features' own units."""
        out: dict[str, float] = {"silhouette": float("nan")}
        if not self.ready:
            return out
        order = self.order()
        means, variances = self.scaler.means, self.scaler.vars
        counts = collections.Counter(self.recent)
        for number, centre in enumerate(order):
            out[f"size:{number}"] = counts.get(centre, 0) / max(len(self.recent), 1)
            for f in self.features:
                scaled = self.kmeans.centers[centre][f]
                out[f"centre:{number}:{f}"] = float(
                    means.get(f, 0.0) + scaled * variances.get(f, 0.0) ** 0.5)
        out["silhouette"] = silhouette(np.array(self.sample), np.array(
            [[self.kmeans.centers[c][f] for f in self.features] for c in order]))
        return out


def _lloyd(data: np.ndarray, centres: np.ndarray, rounds: int = 20
           ) -> tuple[np.ndarray, float]:
    """Lloyd iterations from ``centres``; (centres, inertia). An empty cluster keeps its
    centre."""
    c = centres.copy()
    labels = np.zeros(len(data), dtype=int)
    for _ in range(rounds):
        labels = ((data[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        new = np.array([data[labels == i].mean(axis=0) if (labels == i).any() else c[i]
                        for i in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    return c, float(((data - c[labels]) ** 2).sum())


def silhouette(data: np.ndarray, centres: np.ndarray) -> float:
    """The mean silhouette of ``data`` assigned to the nearest of ``centres`` (Rousseeuw,
    1987): for each point, (b - a) / max(a, b) with a its mean distance to its own cluster
    and b to the nearest other one; NaN with fewer than two non-empty clusters.

    >>> pts = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> round(silhouette(pts, np.array([[0.0], [5.0]])), 2)
    0.98
    """
    if len(data) < 2:
        return float("nan")
    labels = ((data[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    if len(set(labels.tolist())) < 2:
        return float("nan")
    distances = np.sqrt(((data[:, None, :] - data[None, :, :]) ** 2).sum(axis=2))
    scores = []
    for i, label in enumerate(labels):
        own = labels == label
        if own.sum() <= 1:
            scores.append(0.0)
            continue
        a = distances[i, own].sum() / (own.sum() - 1)
        b = min(distances[i, labels == other].mean() for other in set(labels.tolist())
                if other != label)
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


def split_features(specs: Mapping[str, ClusterSpec], logged: Mapping[str, float]
                   ) -> dict[str, dict[str, float | None]]:
    """A log entry's features back per cluster (a missing feature is None)."""
    return {name: {f: logged.get(f"{name}/{f}") for f in spec.features}
            for name, spec in specs.items() if any(f"{name}/{f}" in logged
                                                   for f in spec.features)}


class ClusterModels:
    """Every cluster definition's model by name; thread-safe, picklable."""

    def __init__(self) -> None:
        self._models: dict[str, _Clustering] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_models": self._models}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_lock" not in self.__dict__:  # unpickled; else live, adopting a snapshot
            self._lock = threading.Lock()
        with self._lock:
            self._models = state["_models"]

    def _model(self, spec: ClusterSpec) -> _Clustering:
        model = self._models.get(spec.name)
        if model is None or model.key != spec.key():  # new, or its definition changed
            model = self._models[spec.name] = _Clustering(spec)
        return model

    def learn(self, spec: ClusterSpec, x: Mapping[str, float | None]) -> None:
        with self._lock:
            self._model(spec).learn(x)

    def ready(self, spec: ClusterSpec) -> bool:
        """Whether ``spec``'s clusters are seeded (a decision computes no feature before)."""
        model = self._models.get(spec.name)
        return model is not None and model.ready and model.key == spec.key()

    def assign(self, spec: ClusterSpec, x: Mapping[str, float | None]) -> int | str | None:
        """The customer's cluster: its number, or its name when the definition names them;
        None while the clusters are not seeded yet."""
        return self.assign_values(spec, list(map(x.get, spec.features)))

    def assign_values(self, spec: ClusterSpec, values: Sequence[float | None]
                      ) -> int | str | None:
        """:meth:`assign` from the features' values in ``spec.features`` order (a
        decision's path: no lock unless the model changed since the last read)."""
        model = self._models.get(spec.name)
        if model is None or not model.ready or model.key != spec.key():
            return None
        fast = model._fast
        if fast is None or fast[0] != model.version:
            with self._lock:
                fast = model.fast()
        number = model.nearest(fast, values)
        return spec.names[number] if spec.names else number

    def report(self, specs: Mapping[str, ClusterSpec]) -> list[tuple[str, int, dict[str, float]]]:
        """(name, examples, metrics) of every defined cluster with data."""
        out = []
        with self._lock:
            for name, spec in sorted(specs.items()):
                model = self._models.get(name)
                if model is not None and model.key == spec.key():
                    out.append((name, model.examples, model.report()))
        return out
