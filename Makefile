# Every target sets up its own virtual environment in .venv/ first.
# constraints.txt pins torch to the CPU build on this machine's disk; elsewhere,
# `make PIP_CONSTRAINTS=` (empty) lets pip pick any torch that pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_CONSTRAINTS ?= -c constraints.txt
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check $(PIP_CONSTRAINTS)
CORE := $(VENV)/.installed-core
TOOLS := $(VENV)/.installed-test

.PHONY: setup demo test test-all lint format bench clean-venv

# The package and what it needs to train and predict: all that make demo uses.
$(CORE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $(CORE)

# The test, benchmark and lint tools and every optional extra (MONAI, ONNX, MLflow, OpenVINO, ...).
$(TOOLS): $(CORE)
	$(PIP) -e '.[test]'
	touch $(TOOLS)

## setup: the environment with everything (tests, benchmarks, every extra)
setup: $(TOOLS)

## demo: generate synthetic data, extract patches, train, evaluate on unseen test images
##       (a later run goes to demo-2, ...; make demo OVERWRITE=1 redoes demo in place)
demo: $(CORE)
	$(PY) -m unet_patches.demo $(if $(OVERWRITE),--overwrite)

## test: the default test suite (fast; slow and multi-process tests are in test-all)
test: $(TOOLS)
	$(PY) -m pytest -m "not slow and not distributed"

## test-all: every test, the slow and multi-process ones included (CI runs this)
test-all: $(TOOLS)
	$(PY) -m pytest

## lint: the formatter and linter (ruff, settings in pyproject.toml) check the code; CI runs this
lint: $(TOOLS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## format: format the code and apply ruff's safe fixes
format: $(TOOLS)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: benchmarks; results printed and written under benchmarks/results/
bench: $(TOOLS)
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
