# Quick start:  make serve   |   make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install serve test lint wheel-test proto fuzz bench bench-load bench-micro bench-engines bench-regret bench-cb clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Arbiter needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)  ## serve the example ruleset on 127.0.0.1:50051, profiles in memory
	$(VENV)/bin/arbiter serve --rules rulesets/retail

test: $(STAMP)  ## the test suite (what CI runs)
	$(PY) -m pytest

lint: $(STAMP)  ## ruff, mypy, and the import contracts of the layers (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

wheel-test: $(STAMP)  ## build the wheel, install it outside the checkout, serve with no flags
	$(PY) tests/wheel_smoke.py

proto: $(STAMP)  ## regenerate engine/grpc/gen from proto/
	$(PY) -m engine.grpc.protogen

fuzz: $(STAMP)  ## a long fuzz run: 10,000 API requests per store, 10,000 ruleset mutants
	ARBITER_FUZZ_RANDOM=1 ARBITER_FUZZ_EXAMPLES=10000 ARBITER_FUZZ_MUTANTS=10000 \
	ARBITER_FUZZ_STORED=300 ARBITER_FUZZ_REPORT=.fuzz \
	$(PY) -m pytest tests/test_fuzz_api.py tests/test_fuzz_rules.py tests/test_fuzz_stored.py \
	    -p no:cacheprovider -q -s

bench: bench-micro bench-engines bench-load

bench-micro: $(STAMP)
	$(PY) -m pytest bench/test_bench_rules.py -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

bench-engines: $(STAMP)  ## compiled rules vs rule-engine, cel-python, zen-engine
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pytest bench/test_bench_engines.py -p no:cacheprovider --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

bench-regret: $(STAMP)  ## Thompson sampling vs MABWiser on simulated arms
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench.regret --steps 5000 --seeds 10

bench-cb: $(STAMP)  ## contextual-bandit bake-off vs Vowpal Wabbit
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench.cb_bakeoff --seeds 3

bench-load: $(STAMP)
	$(PY) -m bench.load --duration 10 --concurrency 16

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
