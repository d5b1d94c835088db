# Every target sets up what it needs itself: on a fresh clone `make test` or `make demo` creates
# .venv, installs the pinned packages and builds dl_lib._C; when that is already done they are
# fast no-ops (stamp files track constraints.txt, setup.py and csrc/).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTHON ?= python3
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
# nvcc on this machine may be a wrapper script; torch needs the real toolkit folder.
CUDA_HOME ?= $(shell tools/find_cuda_home.sh)
export CUDA_HOME
PYTEST_ARGS ?=

.PHONY: setup build test demo figures cuda-check bench clean

setup: $(VENV)/.stamp-deps $(VENV)/.stamp-install build

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-deps: constraints.txt | $(VENV)/bin/python
	$(PIP) install -q --upgrade "pip>=24" "setuptools>=69,<81" wheel
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -r constraints.txt
	touch $@

# The package itself (entry points dl_train, dl_test, dl_flops), editable, without the extension.
$(VENV)/.stamp-install: setup.py $(VENV)/.stamp-deps
	DL_LIB_NO_EXT=1 $(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# dl_lib/_C*.so, built in place with ninja (incremental).
build: $(VENV)/.stamp-build
$(VENV)/.stamp-build: $(CSRC) setup.py $(VENV)/.stamp-install
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) setup.py -q build_ext --inplace
	touch $@

# Compile-check every .cu file for sm_90 when nvcc is present (no GPU needed).
cuda-check: setup
	$(PY) tools/cuda_compile_check.py

test: setup
	$(PY) tools/cuda_compile_check.py
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# The demo uses no compiled op (closed routes are skipped by not running cells), so it does not
# wait for the ~2.5 min build of dl_lib._C: that keeps `make demo` on a fresh clone within 10 min.
demo: $(VENV)/.stamp-deps $(VENV)/.stamp-install
	$(PY) tools/demo.py

# Every picture README.md shows, into docs/figures/ (short CPU runs of the Tiny playgrounds,
# 32 min on a fresh clone of 2026-12-02, pip included, with the tests sharing the 2 cores). `tools/make_readme_figures.py --list` names each command.
figures: $(VENV)/.stamp-deps $(VENV)/.stamp-install
	$(PY) tools/make_readme_figures.py

bench: setup
	$(PY) benchmarks/masked_conv.py
	$(PY) benchmarks/dynamic_routing.py --sizes 512x1024 --quick --train-step
	$(PY) benchmarks/anytime.py --models w18 --sizes 512x1024 --quick --train-step

clean:
	rm -rf build dl_lib/_C*.so $(VENV)/.stamp-build
