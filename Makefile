# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench image-test system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

## Serve tokens on 127.0.0.1:8000 from a built-in local issuer (no Azure account needed).
demo: $(STAMP)
	$(BIN)/imds-proxy dev

# Test workers for the tiers below the cluster: their tests mostly wait on processes and
# sockets, so two per core (at most 8). Each worker takes whole files (--dist loadfile), so
# a module's fixtures are built once. The cluster tier runs after them, alone.
TEST_WORKERS ?= $(shell n=$$(( $$(nproc) * 2 )); [ $$n -gt 8 ] && n=8; echo $$n)

## Lint, type-check and run every test (root-only tests run when root).
test: $(STAMP) system-deps lint
	$(BIN)/pytest -q -m "not cluster" -n $(TEST_WORKERS) --dist loadfile
	$(BIN)/pytest -q -m cluster

## The unit and in-process tiers only (no process, namespace, client or cluster): about 30 s.
test-fast: $(STAMP) lint
	$(BIN)/pytest -q -m fast

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Throughput, latency and memory of the real proxy process (see benchmarks/README.md).
bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.run

## Build both images for amd64 and arm64 and run each as a pod (root; installs docker.io,
## debootstrap and qemu-user-static). One architecture: IMAGE_TEST_ARCHES=arm64.
image-test:
	bash deploy/image-test.sh

# Debian packages the tests need when run as root: network namespaces and both iptables
# backends (init tests), curl (demo test), wrk and taskset (benchmarks), promtool (alert rules),
# Java and Maven (the Java SDK clients in tests/clients/java), Mono's C# compiler (the .NET
# clients in tests/clients/dotnet, run on a .NET runtime the tests install from PyPI).
system-deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  for tool in iptables-legacy iptables-nft ip curl wrk taskset setpriv promtool java mvn mcs; do \
	    command -v $$tool >/dev/null 2>&1 || missing=yes; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends iptables iproute2 curl wrk util-linux prometheus \
	      default-jdk-headless maven mono-mcs >/dev/null; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
