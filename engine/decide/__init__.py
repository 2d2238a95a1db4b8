"""The decision path, pure: facts, segments, eligibility, scoring, allocation, ranking, tracers."""
