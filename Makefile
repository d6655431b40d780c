# One dev loop for people and CI. Every target sets up what it needs on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all venv build system-deps test test-rust test-python lint fmt demo bench bench-smoke bench-proxy bench-gateway bench-instructions bench-reply-flood soak wheel-check fuzz clean

all: test

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

build: venv
	$(VENV)/bin/maturin develop --release -q

test-rust:
	cargo test --workspace --release -q

system-deps:
	bash scripts/install-system-deps.sh

test-python: build system-deps
	PYTHON=$(PY) bash scripts/install-reference.sh >/dev/null
	$(PY) -m pytest -q --timeout=600 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test: test-rust test-python

lint: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches scripts
	$(VENV)/bin/ruff format --check python tests benches scripts
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest nomyo._core

fmt: venv
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches scripts
	$(VENV)/bin/ruff check --fix python tests benches scripts

demo: build
	$(VENV)/bin/nomyo chat --local "Hello from nomyo-rs: is this encrypted?"

bench: build system-deps
	PYTHON=$(PY) bash scripts/install-reference.sh >/dev/null
	$(PY) benches/compare.py $(BENCH_ARGS)
	$(PY) benches/engine.py
	$(PY) benches/new_client.py

bench-smoke: build system-deps
	PYTHON=$(PY) bash scripts/install-reference.sh >/dev/null
	$(PY) benches/compare.py --smoke
	$(PY) benches/new_client.py --smoke --out .cache/bench-smoke
	$(PY) benches/proxy.py --smoke --out .cache/bench-smoke
	$(PY) benches/gateway.py --smoke --out .cache/bench-smoke

# nomyo proxy against the library, same router, same run (needs wrk: installed by system-deps).
bench-proxy: build system-deps
	PYTHON=$(PY) bash scripts/install-reference.sh >/dev/null
	$(PY) benches/proxy.py $(BENCH_ARGS)

# The Responses and Messages APIs of nomyo proxy against its chat completions, same run.
bench-gateway: build
	$(PY) benches/gateway.py $(BENCH_ARGS)

# Instructions per request under valgrind (repeatable where CPU time is not; needs valgrind).
bench-instructions: build
	PYTHON=$(PY) bash scripts/install-reference.sh >/dev/null
	$(PY) benches/instructions.py $(BENCH_ARGS)

# Soak (benches/soak.py): 20 000 requests through one client, then 20 000 through `nomyo proxy`,
# 20 % injected faults, the router SIGKILLed and restarted with a new key halfway; checks every
# outcome, RSS/open files/threads. About 7 minutes on a 2-core machine (2.5 direct, 4 through
# the proxy; each run prints its req/s). `make test` runs 300-request versions
# (tests/test_soak.py); CI never runs this one.
soak: build
	$(PY) benches/soak.py --requests 20000 --json .cache/soak/direct.json $(SOAK_ARGS)
	$(PY) benches/soak.py --requests 20000 --through-proxy --json .cache/soak/proxy.json $(SOAK_ARGS)

# 24 clients that never read 16 MB replies, against `nomyo proxy --max-buffered-mib 16` (issue
# 24, finding 5): peak RSS and RSS 15 s after they leave, over the idle proxy (targets +256 and
# +64 MiB), then the same with glibc's default mmap threshold. About a minute; the short
# version is tests/test_reply_budget.py.
bench-reply-flood: build
	$(PY) benches/reply_flood.py --json .cache/reply-flood/fixed.json
	-$(PY) benches/reply_flood.py --dynamic-mmap --json .cache/reply-flood/dynamic.json

wheel-check: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHON=$(CURDIR)/$(PY) bash scripts/wheel-check.sh $(PYTEST_ARGS)

clean:
	rm -rf target dist $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)
