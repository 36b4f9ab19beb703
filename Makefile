# twinjax: two-command quickstart (`make demo`, `make test`) from nothing but python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint typecheck check bench clean notebooks

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install -e .
	touch $@

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -e ".[test,dev]"
	touch $(VENV)/.installed $@

DEMO_SPEC ?= examples/antihypertensive_trial.toml

demo: $(VENV)/.installed
	$(VENV)/bin/twinjax trial $(DEMO_SPEC) --out demo_output

test: $(STAMP)
	$(PY) tools/run_tests.py

test-fast: $(STAMP)
	$(PY) tools/run_tests.py -m "not slow"

notebooks: $(STAMP)
	$(PY) tools/notebooks.py

lint: $(STAMP)
	$(VENV)/bin/ruff check twinjax tests benchmarks calibration tools
	$(VENV)/bin/ruff format --check twinjax tests benchmarks calibration tools

typecheck: $(STAMP)
	$(VENV)/bin/mypy twinjax

check: lint typecheck test

clean:
	rm -rf $(VENV) demo_output .pytest_cache
