# webhyve: `make run` boots the demo guest, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test guests bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

guests:
	$(MAKE) -C guests

run: $(STAMP) guests
	$(VENV)/bin/vmmctl run guests/build/shell.elf

test: $(STAMP) guests
	$(PY) -m pytest -q

bench: $(STAMP) guests
	$(PY) bench/run.py

clean:
	$(MAKE) -C guests clean
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .numba-cache
