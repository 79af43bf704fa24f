# The two commands from README.md:
#   make demo   set up .venv if needed, then run the end-to-end job on the embedded scenes
#   make test   set up .venv (+ the OpenMMLab stack) if needed, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tcjepa-installed
MM_STAMP := $(VENV)/.tcjepa-mm-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test install install-mm test-fast clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
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

clean-venv:
	rm -rf $(VENV)
