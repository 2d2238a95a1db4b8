"""The ``arbiter`` command: one module per subcommand, wired in :mod:`engine.cli.app`."""

from engine.cli.app import main

__all__ = ["main"]
