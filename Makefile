# mlaas4hep: `make demo` runs the whole pipeline offline; `make test` runs the test suite.
#
# `make demo` needs a Python >= 3.10 and nothing else: pip installs the rest into .venv,
# without root and without system packages (.ci/install.sh; PY=python3.11 picks the Python).
# `make test` also needs XRootD, nginx, Chromium, wrk and podman (with runc and mmdebstrap, for the
# container image): .ci/system-deps.sh installs them
# with apt-get as root, or says what to install.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export PY TORCH_INDEX

.PHONY: demo test lint compile install system-deps perf-analyzer bench image clean

# The server's container image (Containerfile): podman, or docker where podman is missing.
# BASE=... picks the base image, BUILDER=... the image that compiles the request path (the same
# Python with a C compiler; by default BASE without "-slim"); ENGINE, IMAGE and IMAGE_ARGS (extra build options) may be set,
# e.g. make image ENGINE="podman --runtime /usr/sbin/runc" IMAGE_ARGS="--network host".
# podman builds in Docker's format, which keeps the HEALTHCHECK (OCI's drops it).
ENGINE ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null)
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/mlaas4hep/__init__.py)
IMAGE ?= mlaas4hep-serve:$(VERSION)
IMAGE_ARGS ?=

$(STAMP): pyproject.toml
	@bash .ci/install.sh $(VENV) all
	@touch $@

$(TEST_STAMP): $(STAMP)
	@bash .ci/install.sh $(VENV) all,test
	@touch $@

install: $(STAMP)

system-deps:
	@bash .ci/system-deps.sh

# Triton's perf_analyzer (a real client of the gRPC and HTTP tests), into .venv/perf_analyzer
perf-analyzer: $(TEST_STAMP)
	@bash .ci/perf-analyzer.sh

# The lint and type gates (rules chosen in pyproject.toml); `make test` runs them first
lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/mlaas4hep demo --out demo-out

# The suite runs on TEST_JOBS pytest-xdist workers (each module's tests on one, the documents
# spread: tests/conftest.py); TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= $(shell python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0))))' 2>/dev/null || echo 2)

test: $(TEST_STAMP) system-deps perf-analyzer lint compile
	$(BIN)/python -m pytest -q --durations=30 -n $(TEST_JOBS) --dist loadscope tests

# The server's request path compiled with mypyc (serve/native.py), rebuilt when its sources changed;
# the tests run on it, as servers started by `mlaas4hep serve` do
compile: $(TEST_STAMP)
	@case "$$MLAAS4HEP_COMPILED" in 0|no|false|off) echo "MLAAS4HEP_COMPILED=$$MLAAS4HEP_COMPILED: not compiling" ;; \
	  *) $(BIN)/mlaas4hep compile --check >/dev/null || $(BIN)/mlaas4hep compile ;; esac

bench: $(STAMP)
	$(BIN)/python bench/stream.py

image:
	@test -n "$(ENGINE)" || { echo "make image needs podman or docker (apt-get install podman)" >&2; exit 1; }
	$(ENGINE) build -f Containerfile -t $(IMAGE) $(if $(findstring podman,$(ENGINE)),--format docker) \
	  $(if $(BASE),--build-arg BASE=$(BASE)) \
	  $(if $(BUILDER)$(BASE),--build-arg BUILDER=$(or $(BUILDER),$(patsubst %-slim,%,$(BASE)))) $(IMAGE_ARGS) .

clean:
	rm -rf $(VENV) demo-out .pytest_cache src/mlaas4hep/serve/_compiled*
