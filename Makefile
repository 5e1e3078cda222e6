# webhyve: `make run` boots the demo guest, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps run console test stress guests linux static precompile bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# System packages (chromium, fonts, ...), installed through apt only where missing: tools/deps.sh lists them and why.
deps:
	@./tools/deps.sh

guests:
	$(MAKE) -C guests

# The Linux guest: Debian's kernel and busybox-static, downloaded once into .cache/debian, and our initramfs.
linux: deps
	$(MAKE) -C guests linux

# Browser libraries (xterm.js, socket.io-client, asciinema-player) into static/node_modules, never committed.
static/node_modules/.package-lock.json: static/package.json static/package-lock.json
	cd static && npm ci --no-audit --no-fund --silent

static: static/node_modules/.package-lock.json

# The engine's numba kernels compiled into .numba-cache by running each kind of guest work once (engine/precompile.py):
# a no-op when the cache for these engine sources is complete, a few minutes after a change.
precompile: $(STAMP) guests
	$(PY) -m engine.precompile

run: deps $(STAMP) guests static precompile
	$(PY) -m webhyve.web.serve --host 127.0.0.1 --port 8080 --demo shell

console: $(STAMP) guests
	$(VENV)/bin/vmmctl run guests/build/shell.elf

# Two workers, each test file on one of them (module fixtures boot their guests once): the Linux boots keep a
# core busy while the browser and server tests mostly wait. Three were tried: the cores were busy 89% of pytest's
# time with three, 88% with two, and the run no shorter.
test: deps $(STAMP) guests linux static precompile
	$(PY) -m pytest -q --durations=20 -n 2 --dist loadfile

# The timing-sensitive tests RUNS times under two CPU burners; prints how many runs passed (tools/stress.py).
RUNS ?= 20
stress: deps $(STAMP) guests static precompile
	$(PY) tools/stress.py --runs $(RUNS)

bench: $(STAMP) guests
	$(PY) bench/run.py

clean:
	$(MAKE) -C guests clean
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .numba-cache
