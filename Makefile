# motion-pipeline: `make demo` and `make test` work on a fresh machine with only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps: `make demo` installs only the runtime dependencies (what a user of the tool
# needs); test, lint and typecheck add the development tools on top, once.
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP         := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Editable: a checkout's own changes are what the demo and the tests run.
$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	@touch $@

# The tests need the s3 extra too: the storage tests run against a real S3-compatible server.
$(STAMP): $(RUNTIME_STAMP) pyproject.toml
	$(PIP) -e '.[dev,s3]'
	@touch $@

demo: $(RUNTIME_STAMP)
	$(BIN)/python manifests/make_demo_media.py
	$(BIN)/motion-pipeline run manifests/demo.yaml --report

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench manifests
	$(BIN)/ruff format --check pipeline tests bench manifests

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is a broken suite, not a pass, so it fails here too.
unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/probe.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
