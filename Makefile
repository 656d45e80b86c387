# `make test` and `make demo` set everything up on a fresh machine (a local .venv) and run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# Lint, then the whole suite, slow end-to-end runs included.
test: $(STAMP)
	$(VENV)/bin/ruff check nnunet_mass trainers tests benchmarks
	$(PY) -m pytest -q tests

# Unit tests only (no stock nnU-Net subprocess runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(VENV)/bin/nnUNetv2_mass_demo --workdir demo_output

clean:
	rm -rf $(VENV) demo_output
