# twinjax: two-command quickstart (`make demo`, `make test`) from nothing but python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint typecheck check bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install -e .
	touch $@

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -e ".[test,dev]"
	touch $(VENV)/.installed $@

DEMO_SPEC ?= examples/pkpd_trial.toml

demo: $(VENV)/.installed
	$(VENV)/bin/twinjax trial $(DEMO_SPEC) --out demo_output

test: $(STAMP)
	ulimit -s unlimited 2>/dev/null || ulimit -s 65536 2>/dev/null || true; \
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check twinjax tests benchmarks calibration
	$(VENV)/bin/ruff format --check twinjax tests benchmarks calibration

typecheck: $(STAMP)
	$(VENV)/bin/mypy twinjax

check: lint typecheck test

clean:
	rm -rf $(VENV) demo_output .pytest_cache
