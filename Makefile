# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install dev lint typecheck pytest bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	# declares openai<3, runs on openai 3: see the dev extra in pyproject.toml
	$(BIN)/python -m pip install -q --no-deps 'llama-index-llms-openai>=0.8.3,<0.9'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/docingest ingest examples/sample-docs --dry-run --report .docingest/demo-report.json

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: dev
	$(BIN)/mypy

# The HTML report tests drive a real headless Chromium (Debian's package); installed when
# missing and we are root, else those tests skip and say why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium: the HTML report tests will skip"; \
	else echo "chromium is not installed (not root): the HTML report tests will skip"; fi; }

pytest: dev chromium
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .docingest .pytest_cache .mypy_cache .ruff_cache
