"""The rule language: text → AST → checked → compiled ``Ruleset``; knows nothing of the engine."""
