# cptra-imgtool: `make run` builds the demo flash image, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SRC    := imgtool tasks tests bench dodo.py

.PHONY: setup system-deps lint test run clean

$(STAMP): pyproject.toml setup.py imgtool/keys/_lmsfast.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP)

# System tools the tests use (Debian packages; skipped with a reason where apt is missing):
# NXP's Code Signing Tool (imx-code-signing-tool) for the i.MX signing-server tests, bubblewrap
# for the cst sandbox, PostgreSQL for the shared LMS state store, SoftHSM2 (+ OpenSC's
# pkcs11-tool) for the PKCS#11 key tests.
SYSTEM_TOOLS := cst csf_parser srktool bwrap openssl gcc curl softhsm2-util pkcs11-tool
system-deps:
	@missing=; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	if [ -z "$$missing" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq imx-code-signing-tool \
	    bubblewrap postgresql openssl gcc curl softhsm2 opensc >/dev/null; \
	else echo "apt-get not available: the i.MX CST, sandbox, PostgreSQL and SoftHSM2 tests will be skipped"; fi

lint: setup
	$(BIN)/ruff check $(wildcard $(SRC))
	$(BIN)/ruff format --check $(wildcard $(SRC))
	$(BIN)/mypy imgtool

test: setup system-deps lint
	$(BIN)/pytest -q

run: setup
	$(BIN)/python -m imgtool.demo

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
