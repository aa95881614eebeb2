# Two commands on a fresh machine:  make book   and   make test
# The environment is built on first use: a conda env (./.conda-env, from environment.yml) when conda
# is on PATH, otherwise ./.venv with pip from requirements.txt. Data: SAMBOOK_DATA=/path/to/data
# (or DOWNLOAD=1 to fetch the official CIFAR files; needs internet).

SHELL := /bin/bash
PROFILE ?= auto
EXECUTOR ?= local
export EXECUTOR
CONDA := $(shell command -v conda 2>/dev/null)
ENV_DIR ?= $(if $(CONDA),.conda-env,.venv)
PY := $(ENV_DIR)/bin/python
STAMP := $(ENV_DIR)/.sambook-installed
EXTRA_STAMP := $(ENV_DIR)/.sambook-extra-installed
BASE_PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
DATA_ARGS := $(if $(DOWNLOAD),--download,)
# EXECUTOR=ray needs the optional extras (ray); they are installed on first use
RAY_ENV := $(if $(filter ray,$(EXECUTOR)),env-extra,)

.PHONY: book test env env-extra check-data bench sweep smoke lint clean help

help:
	@echo "make book     execute every chapter (PROFILE=smoke|fast|paper; default: fast with a GPU, else smoke)"
	@echo "make test     run the test suite and the nbval check of the smoke notebooks"
	@echo "make bench    speed benchmark (writes outputs/bench/)"
	@echo "make sweep    run the training grid only (PROFILE=..., EXECUTOR=local|ray)"
	@echo "make env      build the environment only; make env-extra adds the optional extras (ray, AutoAttack)"

env: $(STAMP)

$(STAMP): requirements.txt environment.yml pyproject.toml
ifneq ($(CONDA),)
	conda env create -y -p $(ENV_DIR) -f environment.yml || conda env update -p $(ENV_DIR) -f environment.yml
else
	@test -x $(PY) || $(BASE_PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
endif
	@touch $(STAMP)

env-extra: $(EXTRA_STAMP)

$(EXTRA_STAMP): $(STAMP) requirements-extra.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-extra.txt
	@touch $(EXTRA_STAMP)

check-data: env
	@$(PY) -m lib check-data --profile $(PROFILE) $(DATA_ARGS)

book: env $(RAY_ENV) check-data
	$(PY) -m lib.book --profile $(PROFILE)

test: env check-data
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q -p no:cacheprovider --nbval --nbval-current-env --nbval-kernel-name python3 \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg outputs/notebooks/smoke

bench: env
	$(PY) -m lib bench

sweep: env $(RAY_ENV) check-data
	$(PY) -m lib sweep --profile $(PROFILE) --executor $(EXECUTOR) $(DATA_ARGS)

smoke: env check-data
	$(PY) -m lib train --method sam --rho 0.1 --profile smoke

clean:
	rm -rf outputs/tmp outputs/.stamps outputs/cache
