# enmei: two commands.  `make demo` and `make test` set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages: python3-venv for the virtualenv; QEMU, busybox and cpio for guests; chromium for the
# browser tests; the real daemons of the e2e suite (run in the foreground as enmei units, never via init)
# and the peers and scraper of `enmei bench daemons` (prometheus also gives promtool to the metrics tests);
# gcc-12 and make build the test image's specimen kernel modules against its kernel's headers; aide checks
# a guest's disk from outside (VM Shadow; e2fsprogs' debugfs reads it).
DEMO_DEBS := python3-venv
TEST_DEBS := python3-venv qemu-system-x86 qemu-utils busybox-static cpio chromium \
             nginx-light redis-server postgresql prometheus monit supervisor gcc-12 make aide
PYTEST_WORKERS ?= 2

.PHONY: help demo test setup debs-demo debs-test lint typecheck pytest clean

help:
	@echo "make demo   set up, then run enmei's demo scenario (about a minute)"
	@echo "make test   set up, then run ruff, mypy --strict and the whole test suite"

# Install missing Debian packages when root; otherwise print the exact command and stop.
define need_debs
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "enmei needs Debian packages that are missing. Run:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

debs-demo:
	$(call need_debs,$(DEMO_DEBS))

debs-test:
	$(call need_debs,$(TEST_DEBS))

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python -m pip install -q -e . --group dev
	@touch $(STAMP)

setup: $(STAMP)

demo: debs-demo $(STAMP)
	$(BIN)/enmei demo

lint: $(STAMP)
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

test: debs-test $(STAMP) lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .enmei
