# Set-up and the two commands the README opens with. Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip

.PHONY: setup dry-run test lint

# torch comes with the embed extra (semantic dedup); the CPU build is installed first so pip does
# not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	# llama-cpp-python builds from source once (about 5 minutes on 2 cores); pip caches the wheel
	$(PIP) install torch==2.13.0
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -e '.[llamacpp,embed,dev]'
	touch $@

setup: $(VENV)/.installed

dry-run: setup
	$(VENV)/bin/tracefoundry run laptop --run-dir runs/laptop
	$(VENV)/bin/tracefoundry inspect runs/laptop --samples 1

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
