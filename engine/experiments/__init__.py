"""Experiments: posteriors, Thompson sampling, time windows, bucketing, states, reports."""
