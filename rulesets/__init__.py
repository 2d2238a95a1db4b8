"""Example rulesets, shipped with the package: ``arbiter serve`` serves ``retail`` by default."""
