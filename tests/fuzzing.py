"""The fuzz tests' shared Hypothesis settings: a short derandomized sample in the normal
test run, a long random one under ``make fuzz`` (``ARBITER_FUZZ_RANDOM`` and the
per-test example counts)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(variable: str, default: int) -> settings:
    """Settings for a fuzz test whose example count is ``$variable`` (else ``default``)."""
    return settings(max_examples=int(os.environ.get(variable, default)),
                    derandomize=not os.environ.get("ARBITER_FUZZ_RANDOM"), deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))
