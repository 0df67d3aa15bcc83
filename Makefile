# Gatehouse developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv lock system-deps proto run lint test test-delivery bench drill clean

venv: $(VENV)/.installed

# Everything comes from the lock (requirements/dev.txt: runtime, dev and bench dependencies,
# every file checked against its hash), then the project itself, editable, without dependencies
# (so .venv/bin/gatehouse exists). Re-installed when the lock or pyproject.toml changes.
# pip installs uv alone, from the lock's own pin and hashes; uv installs the rest: 37 s instead
# of pip's 105 s on the 2-CPU machine (pip spent 60 s of CPU resolving what the lock already
# pins). --system-certs: uv trusts the system's CAs, as pip is configured to here. Compiled at
# install (--compile-bytecode, in parallel): a module compiled at its first import in a picture
# job counts against the job's CPU limits, and three such tests failed.
UV := $(VENV)/bin/uv
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "venv: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 venv'" >&2; exit 1; }
	@start=$$(date +%s); \
	echo "venv: creating $(VENV) with $$($(PYTHON) --version)"; \
	$(PYTHON) -m venv --clear $(VENV) || { echo "venv: '$(PYTHON) -m venv' failed; on Debian install python3-venv" >&2; exit 1; }; \
	awk '/^uv==/ {found = 1} found {print; if ($$0 !~ /\\$$/) exit}' requirements/dev.txt > $(VENV)/uv-requirement.txt; \
	grep -q '^uv==' $(VENV)/uv-requirement.txt || { echo "venv: requirements/dev.txt pins no uv; run make lock" >&2; exit 1; }; \
	echo "venv: pip install $$(head -1 $(VENV)/uv-requirement.txt | tr -d ' \\'), then uv pip install --require-hashes -r requirements/dev.txt"; \
	$(VPY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(VENV)/uv-requirement.txt \
		|| { echo "venv: pip install of uv failed; see the output above (network?)" >&2; exit 1; }; \
	$(UV) pip install --quiet --system-certs --python $(VPY) --require-hashes --compile-bytecode -r requirements/dev.txt \
		|| { echo "venv: uv pip install failed; see the output above (network? a lock that is stale: make lock)" >&2; exit 1; }; \
	$(UV) pip install --quiet --system-certs --python $(VPY) --no-deps --no-build-isolation -e . \
		|| { echo "venv: installing the project itself failed; see the output above" >&2; exit 1; }; \
	touch $@; \
	echo "venv: installed in $$(( $$(date +%s) - start )) s"

# Regenerates the locks from pyproject.toml and requirements/*.in with pip-tools (in a venv of its
# own under .state/), keeping every pin that still fits; LOCK_ARGS=--upgrade moves them all to the
# newest releases, LOCK_ARGS="--upgrade-package NAME" one. Run after editing any dependency.
PIP_TOOLS_VERSION := 7.6.2
LOCK_VENV := .state/pip-tools-$(PIP_TOOLS_VERSION)
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
LOCK_ARGS ?=
lock:
	@test -x $(LOCK_VENV)/bin/pip-compile || { \
		$(PYTHON) -m venv $(LOCK_VENV) \
		&& $(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check pip-tools==$(PIP_TOOLS_VERSION); }
	$(PIP_COMPILE) $(LOCK_ARGS) --output-file requirements/runtime.txt pyproject.toml requirements/runtime.in
	$(PIP_COMPILE) $(LOCK_ARGS) --extra dev --extra bench --output-file requirements/dev.txt \
		pyproject.toml requirements/dev.in

system-deps:
	@scripts/install-system-deps.sh

proto: venv
	$(VPY) -m tools.protogen

run: system-deps venv
	$(VPY) -m devstack

# The gates, configured in pyproject.toml (.pre-commit-config.yaml runs the same): ruff's lint
# rules and its formatter, then mypy --strict over services/, devstack/, bench/, drills/ and tools/.
# All three run even when one fails, so one call shows every finding.
lint: venv
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# Two worker processes (pytest-xdist), each with its own data stores and system; a test file runs
# whole on one worker, so its module fixtures start once, and files go out in the order
# tests/conftest.py sets (end-to-end folders first). PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: lint system-deps venv
	$(VPY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The delivery checks alone: chart, alerts, Dockerfiles and images, skaffold, Terraform. Their
# tools (helm, checkov, ...) install themselves under .state/tools on first use.
test-delivery: system-deps venv
	$(VPY) -m pytest tests/delivery $(PYTEST_ARGS)

# The load harness (bench/): report in bench/results/<timestamp>/report.md, about 15 min.
# BENCH_ARGS=--users-10m adds the design's 10,000,000 users; BENCH_ARGS=--tls-only runs only
# mutual TLS on the auth RPC against plaintext (about 5 min); see `python -m bench --help`.
BENCH_ARGS ?=
bench: system-deps venv
	$(VPY) -m bench $(BENCH_ARGS)

# The fault drills (drills/): each fault of issue 13 on a fresh local stack under mixed load,
# every acknowledged write verified; tables on stdout and in drills/results/latest/report.md.
# About 15 min, 5 of them the etcd outage. DRILL_ARGS="--only redis-freeze --etcd-seconds 30"
# picks drills and lengths; `python -m drills --help` lists them.
DRILL_ARGS ?=
drill: system-deps venv
	$(VPY) -m drills $(DRILL_ARGS)

clean:
	rm -rf $(VENV) .state
