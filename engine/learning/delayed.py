"""Delayed feedback without bias: fake negatives, importance-weighted (Ktena et al., 2019).

A click arrives seconds or minutes after its impression, and a "no click" is only
known when the reward wait is over. Learning positives at once and negatives at the
end of the wait shows a model only positives for the first wait after a start and
too many of them whenever traffic grows, so its predictions run high. Arbiter learns
each shown action as a **negative at once** (its first impression) and **again as a
positive** when its first reward (click or conversion) arrives. The stream a model
sees is then biased in a known way: for features ``x`` with true click rate ``p``
every impression is a negative and a fraction ``p`` are also positives, so

    b(y=1 | x) = p / (1 + p),   b(y=0 | x) = 1 / (1 + p).

Importance weights ``p(y | x) / b(y | x)`` make the expected loss the unbiased one.
With the model's own current prediction ``f`` standing in for ``p``, the "fake
negative weighted" (FNW) loss of Ktena et al. weights a positive by ``1 + f`` and a
negative by ``(1 - f)(1 + f)``, and with ``f = p`` the weighted share of positives is
exactly ``p``, so ``p`` is where the expected gradient vanishes:

>>> p = 0.1
>>> b1, b0 = p / (1 + p), 1 / (1 + p)
>>> w1, w0 = positive_weight(p), fake_negative_weight(p)
>>> round(b1 * w1 / (b1 * w1 + b0 * w0), 12)
0.1

Nothing waits: no impression is held until its label is final, so applying a
learning event costs the same however many impressions await their reward.

References: S. Ktena, A. Tejani, L. Theis et al., "Addressing delayed feedback for
continuous training with neural networks in CTR prediction", RecSys 2019.
"""

from __future__ import annotations

CLIP = 1e-3
"""Predictions are clipped to [CLIP, 1 - CLIP] in the weights (no zero weight)."""


def _clip(p: float) -> float:
    return min(max(p, CLIP), 1.0 - CLIP)


def fake_negative_weight(prediction: float) -> float:
    """Weight of the negative every impression is first learnt as: ``(1 - f)(1 + f)``."""
    p = _clip(prediction)
    return (1.0 - p) * (1.0 + p)


def positive_weight(prediction: float) -> float:
    """Weight of the positive learnt when the reward arrives: ``1 + f``."""
    return 1.0 + _clip(prediction)
