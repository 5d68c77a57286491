# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv (if missing) and install the package into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=

.PHONY: install test demo fixtures bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

fixtures: install
	$(PY) testdata/make_fixtures.py --output_dir testdata/generated

demo: install
	$(PY) bin/make_corpus --output_dir $(DEMO_DIR)/corpus
	$(PY) bin/extract_features --input $(DEMO_DIR)/corpus/train.csv --output_dir $(DEMO_DIR)/features/train --num_shards 4
	$(PY) bin/extract_features --input $(DEMO_DIR)/corpus/eval.csv --output_dir $(DEMO_DIR)/features/eval --num_shards 2

bench: install
	$(PY) benchmarks/bench_frontend.py
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
