"""A fixed split's phases: which exposures were made under the weights served now.

The sample-ratio check compares exposures with the split's weights, so it may only count
exposures made under those weights. Changing the weights mid-experiment (20/20/60 after
50/50) starts a new phase, as in GrowthBook: when a server first serves a ruleset whose
split differs from the one the store last saw, the store keeps each arm's exposures so
far as the phase's baseline (:meth:`~engine.ports.Store.mark_split`), and the check
counts what came after it. A split's identity is its arms and their shares, so a
changed salt, traffic or holdout starts no phase (the shares among arms are the same);
an experiment that allocates by Thompson sampling or has a winner has an identity too,
so one that becomes a fixed split counts only what the split assigned. An experiment
the store has never seen starts with an empty baseline (its split is taken to have
been the same all along).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from dsl.ruleset import Experiment
from engine.records import ArmCounts


def split_fingerprint(experiment: Experiment) -> str:
    """The identity of an experiment's allocation: a fixed split's arms and shares, or
    how it allocates otherwise (Thompson sampling, a winner) and among which arms.

    >>> from dsl.ast import Pos
    >>> from dsl.ruleset import BetaPrior
    >>> def split(*weights: float) -> Experiment:
    ...     return Experiment("e", "p", ("a", "b"), BetaPrior(), "click", Pos("f", 1, 1),
    ...                       weights=weights)
    >>> split(50, 50).weights, split_fingerprint(split(50, 50)) == split_fingerprint(split(1, 1))
    ((50, 50), True)
    >>> split_fingerprint(split(50, 50)) == split_fingerprint(split(20, 80))
    False
    >>> split_fingerprint(split()) == split_fingerprint(split(50, 50))  # Thompson, then 50/50
    False
    """
    if experiment.winner is not None:
        identity = f"winner {experiment.winner}: " + ",".join(experiment.arms)
    elif not experiment.weights:
        identity = "thompson: " + ",".join(experiment.arms)
    else:
        total = float(sum(experiment.weights))
        identity = ",".join(f"{arm}={weight / total:.9g}" for arm, weight in
                            zip(experiment.arms, experiment.weights, strict=True))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def exposures_since(experiment: Experiment, counts: Mapping[str, ArmCounts],
                    marked: tuple[str, Mapping[str, float]] | None
                    ) -> tuple[dict[str, float], bool]:
    """Each arm's exposures (all-time ``counts``) made under the split served now, and
    whether a phase began later than the experiment (``marked``: the store's
    fingerprint and baseline; a baseline for another split is not this one's).

    >>> from dsl.ast import Pos
    >>> from dsl.ruleset import BetaPrior
    >>> e = Experiment("e", "p", ("a", "b"), BetaPrior(), "click", Pos("f", 1, 1),
    ...                weights=(20, 80))
    >>> counts = {"a": ArmCounts(120.0), "b": ArmCounts(180.0)}
    >>> exposures_since(e, counts, (split_fingerprint(e), {"a": 100.0, "b": 100.0}))
    ({'a': 20.0, 'b': 80.0}, True)
    >>> exposures_since(e, counts, ("another split", {"a": 100.0, "b": 100.0}))
    ({'a': 120.0, 'b': 180.0}, False)
    """
    total = {arm: counts.get(arm, ArmCounts()).trials for arm in experiment.arms}
    if marked is None or marked[0] != split_fingerprint(experiment) or not marked[1]:
        return total, False
    baseline = marked[1]
    return {arm: max(0.0, trials - baseline.get(arm, 0.0)) for arm, trials in total.items()
            }, True
