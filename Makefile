# Developer tasks. `make test` is what CI runs (after .ci/run makes sure RabbitMQ is up).
#
# PYTHON is the interpreter the virtualenvs are made with (3.11 or newer):
#   make demo PYTHON=python3.12
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PY := $(VENV)/bin/python
# The development tools' pinned versions (see the file).
CONSTRAINTS := requirements/constraints.txt

.PHONY: install lint typecheck test test-pythons docs all demo clean

# "3.10" for the interpreter PYTHON names, and 1 when it is new enough (empty when it
# does not run). %-formatting, so that even a Python 2 answers.
python_version = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
python_ok = $(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null)
# Expanded as a recipe starts: one line, and make stops.
check_python = $(if $(filter 1,$(python_ok)),,$(error $(PYTHON) is $(if $(python_version),Python $(python_version),no Python that runs): taskwarren needs Python 3.11 or newer; name one with make $(or $(MAKECMDGOALS),install) PYTHON=/path/to/python3.11))

# The library with its test tools, and the email pipeline (its own distribution, in
# workers/), which adds `taskwarren demo`.
$(VENV)/.installed: pyproject.toml workers/pyproject.toml $(CONSTRAINTS)
	@: $(check_python)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[test]' -e ./workers
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check taskwarren workers tests benchmarks examples scripts

typecheck: install
	$(PY) -m mypy --strict taskwarren

test: lint typecheck
	PY=$(PY) tests/support/run_tests.sh

# The documentation site into site/, warnings as errors (tests/unit/test_docs_build.py
# builds it too). NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict


# The unit tests on the other supported Pythons (3.12 and 3.13; see the script).
test-pythons:
	tests/support/other_pythons.sh

all: test docs

# The demo needs the library and the email pipeline only: a virtualenv of its own,
# without the test tools.
$(DEMO_VENV)/.installed: pyproject.toml workers/pyproject.toml
	@: $(check_python)
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e . -e ./workers
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/taskwarren demo

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-3.* .mypy_cache .ruff_cache .pytest_cache site
