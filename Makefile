# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv (if missing) and install the package into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=

.PHONY: install test test-all soak-quick demo fixtures bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The suite CI runs (about 10 minutes on 2 cores); test-all adds the tests
# marked slow, whose faults `soak-quick` injects in CI.
test: install
	$(PY) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# The reliability soak in its CI mode (under 3 minutes): a few faults of each
# kind; exits non-zero when a fault is not survived or work is lost.
soak-quick: install
	$(PY) benchmarks/soak.py --quick --output_json=soak_quick.json \
	    --output_md=soak_quick.md

fixtures: install
	$(PY) testdata/make_fixtures.py --output_dir testdata/generated

# The whole path on the embedded synthetic corpus, ending in Table 1
# ($(DEMO_DIR)/report.md). Rerunning continues where it stopped.
demo: install
	$(PY) bin/demo --flagfile=flags/demo_pipeline.cfg --output_dir=$(DEMO_DIR)

bench: install
	$(PY) benchmarks/bench_frontend.py
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
