# The README's commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: a CPU build on machines without a GPU (torch==2.13.0 resolves to the local CPU wheel here).
TORCH_SPEC ?= torch==2.13.0
export MUJOCO_GL ?= egl

.PHONY: setup demo test lint browser bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing torch with CUDA"; $(PY) -m pip install -q torch; \
	else \
		echo "no GPU: installing CPU torch ($(TORCH_SPEC))"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Five minutes, then the run's summary (what it learned); DEMO_ARGS= runs until Ctrl-C.
DEMO_ARGS ?= --duration 300

demo: setup
	$(VENV)/bin/fleetrl run configs/local.yaml $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check fleetrl tests benchmarks
	$(VENV)/bin/ruff format --check fleetrl tests benchmarks
	$(VENV)/bin/hadolint --config docker/.hadolint.yaml docker/Dockerfile.cpu docker/Dockerfile.cuda

# The console test drives headless Chromium: install Debian's package where we may (CI runs as root with
# apt-get); anywhere else say why not and carry on (that test then skips with the reason).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the console test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 \
				&& apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } \
		|| echo "could not install chromium (apt-get failed): the console test will skip"; \
	else \
		echo "no chromium, and installing it needs root and apt-get: the console test will skip"; \
	fi

test: setup lint browser
	$(PY) -m pytest -q --durations=15 tests $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/scheduler_latency.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
