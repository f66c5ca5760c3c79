# Developer tasks. `make test` is what CI runs (after .ci/run makes sure RabbitMQ is up).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install lint typecheck test docs all demo clean

# The library with its test tools, and the email pipeline (its own distribution, in
# workers/), which adds `taskwarren demo`.
$(VENV)/.installed: pyproject.toml workers/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e ./workers
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check taskwarren workers tests benchmarks examples

typecheck: install
	$(PY) -m mypy --strict taskwarren

test: lint typecheck
	PY=$(PY) tests/support/run_tests.sh

# The documentation site into site/, warnings as errors (tests/unit/test_docs_build.py
# builds it too). NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

all: test docs

demo: install
	$(VENV)/bin/taskwarren demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
