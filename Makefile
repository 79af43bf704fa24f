# The two commands from README.md:
#   make demo   set up .venv if needed, then run the end-to-end job on the embedded scenes
#   make test   set up .venv (+ the OpenMMLab stack) if needed, then run the test suite
# Both install exactly requirements/lock.txt, hash-checked; `make lock` regenerates it from
# pyproject.toml and requirements/mm.in (see docs/INSTALL.md).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
STAMP := $(VENV)/.tcjepa-installed
MM_STAMP := $(VENV)/.tcjepa-mm-installed
LOCK_TOOL := .cache/lock-tool
LOCK_ARGS ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=
# Wheels only: an sdist would be built with build tools that no hash pins.
PIP_LOCKED := -m pip install -q --disable-pip-version-check --require-hashes --only-binary :all:

.PHONY: demo test install install-mm test-fast lock clean-venv

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		f"$(VENV) runs Python {sys.version.split()[0]}; $(LOCK) is for Python 3.11: make clean-venv, then make PYTHON=python3.11")'
	$(BIN)/python $(PIP_LOCKED) -r $(LOCK)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(MM_STAMP): $(STAMP) scripts/install_mm.sh
	bash scripts/install_mm.sh $(BIN)/python
	touch $(MM_STAMP)

install-mm: $(MM_STAMP)

demo: $(STAMP)
	$(BIN)/python -m evals.demo $(DEMO_ARGS)

test: $(STAMP) $(MM_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit tests only, without the mm stack or the slow end-to-end tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not mm" $(PYTEST_ARGS)

# Re-resolve the lock (needs PyPI). Keeps the current pins where they still fit the ranges;
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest versions that fit.
lock:
	test -x $(LOCK_TOOL)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOL) && \
		$(LOCK_TOOL)/bin/python $(PIP_LOCKED) -r requirements/lock-tool.txt; }
	$(LOCK_TOOL)/bin/uv pip compile --quiet pyproject.toml requirements/mm.in --extra dev \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command "make lock" $(LOCK_ARGS) -o $(LOCK)

clean-venv:
	rm -rf $(VENV)
