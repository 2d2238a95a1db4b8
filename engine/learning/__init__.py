"""Propensity models learnt online: learners by name, features, quality, the log consumer."""
