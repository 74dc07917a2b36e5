# Comity — the two commands: `make demo` runs a local federation, `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := .interop

.PHONY: test test-fast demo lint typecheck bench clean interop-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(INTEROP)/node_modules/jose/package.json: tests/interop/package.json
	mkdir -p $(INTEROP)
	cp tests/interop/package.json $(INTEROP)/package.json
	cd $(INTEROP) && npm install --no-audit --no-fund --silent
	touch $@

interop-deps: $(INTEROP)/node_modules/jose/package.json

## Every test, every tier (the README's test command; CI runs it).
test: $(STAMP) interop-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	COMITY_INTEROP_DIR=$(abspath $(INTEROP)) $(BIN)/pytest -n 2 -q

## Fast tier: skips tests marked slow.
test-fast: $(STAMP) interop-deps
	COMITY_INTEROP_DIR=$(abspath $(INTEROP)) $(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/protocol_bench.py

demo: $(STAMP)
	$(BIN)/python -m node.demo

clean:
	rm -rf $(VENV) $(INTEROP) .pytest_cache .mypy_cache .ruff_cache
