# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test lint install clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) manage.py standalone --port $(PORT)

lint: install
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/deploy_fanout.py

clean:
	rm -rf var/workspaces var/test-*.sqlite3*
