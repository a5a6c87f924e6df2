# rabbittask: `make demo` and `make test` install what they need (venv, packages, a broker).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo's own virtualenv: the package without extras, so a first `make demo` installs in ~20 s.
DEMO_VENV ?= .venv-demo
export RABBITTASK_BROKER_URL ?= amqp://guest:guest@localhost:5672/
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv demo-venv broker demo dist docs docs-serve test test-fast faults scaling soak fuzz bench bench-partitions bench-history check format clean

$(VENV)/.installed: pyproject.toml
	bash scripts/bootstrap.sh $(VENV)
	touch $@

venv: $(VENV)/.installed

$(DEMO_VENV)/.installed: pyproject.toml
	bash scripts/bootstrap.sh $(DEMO_VENV) ""
	touch $@

demo-venv: $(DEMO_VENV)/.installed

broker:
	bash scripts/ensure-broker.sh

demo: demo-venv broker
	$(DEMO_VENV)/bin/python -m examples.demo

# The wheel and the sdist, in dist/ (`make test` builds them too and installs the wheel in a clean
# virtualenv: tests/packaging/test_wheel.py).
dist: venv
	rm -rf dist
	$(PY) -m build --outdir dist .

# The documentation site, in site/: strict, so a broken link or reference fails the build
# (`make test` builds it too, in tests/unit/test_docs_site.py).
docs: venv
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: venv
	$(VENV)/bin/mkdocs serve

# Test files run in PYTEST_WORKERS processes (pytest-xdist; a file's tests stay together, in order):
# most tests wait on brokers, not on the CPU, so three share 2 cores well (11 min against 15.5 with two).
# PYTEST_WORKERS=0 runs them in this process (for -s, pdb).
PYTEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist loadfile)

# The whole suite: unit, integration, and the fault scenarios on throwaway nodes (~12 min on 2 cores).
test: venv broker
	RABBITTASK_TEST_BROKER_URL=$${RABBITTASK_TEST_BROKER_URL:-$$RABBITTASK_BROKER_URL} \
		$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the fault scenarios (~4 min): the loop while developing.
test-fast: venv broker
	RABBITTASK_TEST_BROKER_URL=$${RABBITTASK_TEST_BROKER_URL:-$$RABBITTASK_BROKER_URL} \
		$(PY) -m pytest $(XDIST) -m "not faults" $(PYTEST_ARGS)

# Only the fault scenarios (they start their own throwaway broker nodes), at their full size: chords of
# 5,000 members, 1,000 tasks each in a child of its own, 100,000 tasks delayed an hour, a 30 s leader cut,
# a rate limit held 30 s over three workers.
faults: venv
	RT_CHORD_FAULT_MEMBERS=$${RT_CHORD_FAULT_MEMBERS:-5000} RT_CHILD_PER_TASK=$${RT_CHILD_PER_TASK:-1000} \
		RT_DELAYED_TASKS=$${RT_DELAYED_TASKS:-100000} RT_PARTITION_LEADER_S=$${RT_PARTITION_LEADER_S:-30} \
		RT_RATE_STEADY_S=$${RT_RATE_STEADY_S:-30} RT_MAJORITY_OUTAGE_S=$${RT_MAJORITY_OUTAGE_S:-30} \
		$(PY) -m pytest $(XDIST) -m faults $(PYTEST_ARGS)

# Drain rate on a 3-node cluster with workers on 1, 2 and 3 hosts (network namespaces; root).
scaling: venv
	$(PY) -m bench.scaling $(SCALING_ARGS)

# A mixed workload on a 3-node cluster (workers on 2 hosts, network namespaces; root) under a seeded chaos
# loop, judged by the ledger; a 60 s smoke of it runs in `make test` (tests/faults/test_soak.py).
SOAK_MINUTES ?= 10
SOAK_TASKS ?= 100000
SOAK_SEED ?= 0
soak: venv
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_TASKS=$(SOAK_TASKS) SOAK_SEED=$(SOAK_SEED) $(PY) -m bench.soak $(SOAK_ARGS)

# Fuzz what a worker decodes: the hypothesis tests with FUZZ_EXAMPLES cases each (in memory, and batches
# through a real worker), then FUZZ_RUNS coverage-guided inputs (atheris); counts in fuzz-report.json.
FUZZ_EXAMPLES ?= 5000
FUZZ_WORKER_BATCHES ?= 200
FUZZ_RUNS ?= 125000
FUZZ_SEED ?= 1
fuzz: venv broker
	$(VENV)/bin/pip install -q "atheris>=2.3"
	RABBITTASK_TEST_BROKER_URL=$${RABBITTASK_TEST_BROKER_URL:-$$RABBITTASK_BROKER_URL} FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		FUZZ_WORKER_BATCHES=$(FUZZ_WORKER_BATCHES) $(PY) -m pytest -p no:xdist -q --timeout=0 tests/fuzz $(PYTEST_ARGS)
	FUZZ_REPORT=fuzz-report.json $(PY) -m tests.fuzz.atheris_decoder -runs=$(FUZZ_RUNS) -max_len=4096 \
		-seed=$(FUZZ_SEED) -print_final_stats=1 2>fuzz-atheris.log || (tail -40 fuzz-atheris.log; exit 1)
	@echo "coverage-guided: $$(cat fuzz-report.json)"

bench: venv broker
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.chord $(CHORD_ARGS)
	$(PY) -m bench.partitions $(BENCH_PARTITIONS_ARGS)

# Partitioned queues alone: ordered vs plain throughput, a tenant's wait behind another's backlog (~2 min).
bench-partitions: venv broker
	$(PY) -m bench.partitions $(BENCH_PARTITIONS_ARGS)

# A dashboard search by a piece of the arguments over 100,000 task events (in-process, no broker).
bench-history: venv
	$(PY) -m bench.history_search

LINTED := rabbittask tests bench examples docs/hooks docs/samples

# tests/typing holds user code with the mistakes a type checker must catch: mypy and pyright both check it.
check: venv
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict tests/typing
	$(VENV)/bin/pyright

format: venv
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) $(DEMO_VENV) site dist build .pytest_cache .mypy_cache .ruff_cache *.egg-info
