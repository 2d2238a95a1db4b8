"""Deterministic assignment of customers to experiments, arms and holdouts.

``bucket(salt, user_id)`` is the first 8 bytes of ``SHA-256("{salt}:{user_id}")``
(UTF-8) read as a big-endian unsigned integer, divided by 2**64: uniform in [0, 1),
the same in every replica, language and run. Test vectors (also in the tests)::

    bucket("hero_test", "ann")  == 0.6372275554944727
    bucket("hero_test", "bob")  == 0.27373710392329237

* Holdout: a customer is held out of experiment E when
  ``bucket(E.salt + ":holdout", user) * 100 < E.holdout``. Its own hash keeps arm
  assignments unchanged when the holdout changes, and growing the holdout only adds
  customers to it (nobody leaves).
* Fixed split: the arm whose cumulative weight range contains ``bucket(E.salt, user)``,
  so a customer keeps the same arm for as long as the weights stay the same.
* Traffic: a customer takes part in experiment E at all when
  ``bucket(E.salt + ":traffic", user) * 100 < E.traffic`` (default 100%). Growing
  the traffic only adds customers; those already in keep their arm (the arm hash is
  independent of it). Outside it they see the arms as ordinary actions.
* Layers: experiments sharing ``layer: L`` are mutually exclusive: a customer takes
  part in the ``int(bucket("layer:" + L, user) * n)``-th of the layer's n experiments
  (sorted by name); adding an experiment to a layer reassigns customers.

>>> bucket("hero_test", "ann")
0.6372275554944727
"""

from __future__ import annotations

import hashlib
from itertools import accumulate

from dsl.ruleset import Experiment, Ruleset


def bucket(salt: str, user_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_holdout(experiment: Experiment, user_id: str) -> bool:
    if experiment.holdout <= 0:
        return False
    return bucket(f"{experiment.salt}:holdout", user_id) * 100.0 < experiment.holdout


def fixed_arm(experiment: Experiment, user_id: str) -> str:
    """The arm a fixed split assigns to this customer."""
    weights = experiment.weights
    total = sum(weights)
    point = bucket(experiment.salt, user_id) * total
    for arm, edge in zip(experiment.arms, accumulate(weights), strict=True):
        if point < edge:
            return arm
    return experiment.arms[-1]  # unreachable but for float rounding at the top edge


def in_traffic(experiment: Experiment, user_id: str) -> bool:
    """Whether the customer is in the experiment's ``traffic`` share at all."""
    if experiment.traffic >= 100:
        return True
    return bucket(f"{experiment.salt}:traffic", user_id) * 100.0 < experiment.traffic


def takes_part(ruleset: Ruleset, experiment: Experiment, user_id: str) -> bool:
    """False outside the experiment's traffic, or when its layer gave this customer
    another experiment."""
    if not in_traffic(experiment, user_id):
        return False
    if experiment.layer is None:
        return True
    members = ruleset.layers[experiment.layer]
    return members[int(bucket(f"layer:{experiment.layer}", user_id) * len(members))] == (
        experiment.name)
