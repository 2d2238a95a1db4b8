"""Arbiter's engine: the library API (``engine.service.Arbiter``) and its layers."""
