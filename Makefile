# rabbittask: `make demo` and `make test` install what they need (venv, packages, a broker).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export RABBITTASK_BROKER_URL ?= amqp://guest:guest@localhost:5672/

.PHONY: venv broker demo test test-fast faults scaling bench check format clean

$(VENV)/.installed: pyproject.toml
	bash scripts/bootstrap.sh $(VENV)
	touch $@

venv: $(VENV)/.installed

broker:
	bash scripts/ensure-broker.sh

demo: venv broker
	$(PY) -m examples.demo

# Test files run in PYTEST_WORKERS processes (pytest-xdist; a file's tests stay together, in order):
# most tests wait on brokers, not on the CPU. PYTEST_WORKERS=0 runs them in this process (for -s, pdb).
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile)

# The whole suite: unit, integration, and the fault scenarios on throwaway nodes (~9 min on 2 cores).
test: venv broker
	RABBITTASK_TEST_BROKER_URL=$${RABBITTASK_TEST_BROKER_URL:-$$RABBITTASK_BROKER_URL} \
		$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the fault scenarios (~4 min): the loop while developing.
test-fast: venv broker
	RABBITTASK_TEST_BROKER_URL=$${RABBITTASK_TEST_BROKER_URL:-$$RABBITTASK_BROKER_URL} \
		$(PY) -m pytest $(XDIST) -m "not faults" $(PYTEST_ARGS)

# Only the fault scenarios (they start their own throwaway broker nodes).
faults: venv
	$(PY) -m pytest $(XDIST) -m faults $(PYTEST_ARGS)

# Drain rate on a 3-node cluster with workers on 1, 2 and 3 hosts (network namespaces; root).
scaling: venv
	$(PY) -m bench.scaling $(SCALING_ARGS)

bench: venv broker
	$(PY) -m bench.run $(BENCH_ARGS)

check: venv
	$(VENV)/bin/ruff check rabbittask tests bench examples docs/samples
	$(VENV)/bin/ruff format --check rabbittask tests bench examples docs/samples
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format rabbittask tests bench examples docs/samples
	$(VENV)/bin/ruff check --fix rabbittask tests bench examples docs/samples

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
