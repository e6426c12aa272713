# mlaas4hep: `make demo` runs the whole pipeline offline; `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# torch is pinned to the CPU wheel that lies on disk; a plain `torch` would pull a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash .ci/system-deps.sh

demo: install system-deps
	$(BIN)/mlaas4hep demo --out demo-out

test: install system-deps
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/stream.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
