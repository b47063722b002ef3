# cptra-imgtool: `make run` builds the demo flash image, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SRC    := imgtool tasks tests bench dodo.py

.PHONY: setup system-deps lint test run clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP)

# NXP's Code Signing Tool for the i.MX signing-server tests (Debian package; skipped without apt).
system-deps:
	@if command -v cst >/dev/null 2>&1 && command -v csf_parser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq imx-code-signing-tool openssl gcc curl >/dev/null; \
	else echo "apt-get not available: the i.MX CST tests will be skipped"; fi

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
