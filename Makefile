# fracture-qi: `make demo` runs the whole suite on the synthetic cohort; `make test` tests it.
# Everything installs into .venv; Debian packages for the real-service tests via scripts/.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch: the CPU build by default (fast, enough for tests and the demo). A GPU site sets e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output
DEMO_PATIENTS ?= 60
PYTEST_ARGS ?=

.PHONY: help install system-deps demo test test-fast bench clean

help:
	@echo "make demo   - set up and run the whole suite on the synthetic cohort ($(DEMO_OUT)/)"
	@echo "make test   - run the test suite (installs Debian test services if missing)"
	@echo "make bench  - run the benchmarks into benchmark-results/ (BENCH_ARGS=--quick: a smoke run)"

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -c constraints.txt -e ".[screening,distributed,test,notebook]"
	@touch $@

install: $(VENV)/.installed

system-deps:
	@bash scripts/install-system-deps.sh

demo: $(VENV)/.installed
	$(VENV)/bin/fracture-qi demo --out $(DEMO_OUT) --patients $(DEMO_PATIENTS)

test: $(VENV)/.installed system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow and not browser and not orthanc and not postgres" $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache test-artifacts benchmark-results
