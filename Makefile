# wakegate — developer entry points. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two installs into the one venv, each with its stamp: `make run` needs only the gateway's runtime
# dependencies and what compiles the data path ([native]); lint, tests and benchmarks add the rest
# ([dev,bench]: pytest, playwright, kubernetes-validate, matplotlib, ...).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# Debian packages the suite needs: network namespaces for pods (iproute2), headless Chromium for the
# waiting-page test, nginx and wrk for the benchmark smoke runs, gcc and the C library's headers for the
# compiled data path (what the Dockerfile's build stage installs; tests/test_packaging.py runs its steps),
# promtool (Debian's prometheus) for the alert rules' tests, iptables and ipset for kube-router's
# network-policy controller (it enforces the test cluster's NetworkPolicies with iptables rules and
# ipsets; tests/cluster/build.sh builds it).
APT_PACKAGES := iproute2 chromium nginx-light wrk gcc libc6-dev prometheus iptables ipset

.PHONY: run demo test lint unit fuzz venv dev-venv native system-deps cluster-build cluster-up cluster-down bench clean

$(RUN_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[native]'
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[dev,bench,native]'
	touch $(DEV_STAMP)

venv: $(RUN_STAMP)

dev-venv: $(DEV_STAMP)

native: $(RUN_STAMP)  ## Compile the data path with mypyc (gateway/native.py); a no-op when up to date.
	$(PY) -m gateway.native build --if-needed

run: $(RUN_STAMP)  ## Start the demo gateway on the embedded local backend (no cluster needed).
	$(PY) -m gateway.native build --if-needed || echo "note: the data path runs as plain Python (slower, same behaviour)"
	$(VENV)/bin/wakegate demo

demo: run

system-deps:  ## Install the Debian packages the suite uses (skipped when already present).
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check gateway provisioner tests bench setup.py
	$(VENV)/bin/mypy

unit: $(DEV_STAMP) native  ## Only the tests that need no cluster.
	$(VENV)/bin/pytest -m "not cluster"

FUZZ_EXAMPLES ?= 50000
fuzz: $(DEV_STAMP) native  ## The data-path fuzzer's long run: FUZZ_EXAMPLES random streams per direction (tests/forward/test_fuzz.py).
	WAKEGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/forward/test_fuzz.py --timeout=0 -p no:cacheprovider

test: $(DEV_STAMP) system-deps cluster-build lint native  ## Install everything, then run the whole suite.
	$(VENV)/bin/pytest

cluster-build:  ## Build (or reuse) kube-apiserver, kube-controller-manager, kubectl, etcd, helm and kube-router.
	bash tests/cluster/build.sh

cluster-up: $(DEV_STAMP) cluster-build
	$(PY) -m tests.cluster.controlplane up

cluster-down: $(DEV_STAMP)
	$(PY) -m tests.cluster.controlplane down

bench: $(DEV_STAMP) system-deps cluster-build native  ## Benchmarks vs nginx and direct (bench/README.md); writes bench/results/
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .cluster .mypy_cache .ruff_cache .pytest_cache build dist gateway/_native.json
	find gateway -name '*.so' -delete
