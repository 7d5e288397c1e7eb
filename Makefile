# One entry point for humans and CI. Every target creates its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib,sys;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:12])")

.PHONY: test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers: the suite spends about half its time waiting on servers it started, so two
# fill two cores without oversubscribing them (plain `pytest` runs serially, for debugging).
unit: $(STAMP)
	$(BIN)/pytest -q -n 2

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python -m mlxpin.dev.demo

bench: $(STAMP)
	$(BIN)/python bench/lock.py
	$(BIN)/python bench/fetch.py
	$(BIN)/python bench/launch.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/concurrency.py
	$(BIN)/python bench/gatewaycpu.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/build.py
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
