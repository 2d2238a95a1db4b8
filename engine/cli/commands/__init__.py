"""One module per ``arbiter`` subcommand, each with ``register(sub)`` and ``run(args)``."""
