# Two commands on a fresh machine:  make book   and   make test
# The environment is built on first use: a conda env (./.conda-env, from environment.yml) when conda
# is on PATH, otherwise ./.venv with pip from requirements.txt. Data: SAMBOOK_DATA=/path/to/data
# (or DOWNLOAD=1 to fetch the official CIFAR files; needs internet).

SHELL := /bin/bash
PROFILE ?= auto
EXECUTOR ?= local
GRID ?= paper
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
# every smoke run the chapters read: the paper grid, chapter 5's (all = paper + beyond) and the fp32-attack runs,
# in one sweep, so its two workers take the costliest runs first and finish together
SMOKE_GRIDS := all,fp32attack
NBVAL := -p no:cacheprovider --nbval --nbval-current-env --nbval-kernel-name python3 \
         --nbval-sanitize-with tests/nbval_sanitize.cfg tests/notebooks

# bad settings stop here, in one line, before anything runs
ifeq ($(filter $(PROFILE),auto smoke cpu cpu-long fast paper),)
$(error unknown PROFILE '$(PROFILE)'; valid profiles: auto, smoke, cpu, cpu-long, fast, paper)
endif
ifeq ($(filter $(EXECUTOR),local ray),)
$(error unknown EXECUTOR '$(EXECUTOR)'; valid executors: local, ray)
endif
ifeq ($(filter $(GRID),paper core beyond fp32attack length all),)
$(error unknown GRID '$(GRID)'; valid grids: paper, core, beyond, fp32attack, length, all)
endif

.PHONY: book site test test-isa expectations readme env env-extra check-data check-smoke-data bench sweep smoke clean help

help:
	@echo "make book          execute every chapter and build the site (PROFILE=smoke|cpu|cpu-long|fast|paper; default: fast with a GPU,"
	@echo "                   else the README's scale, cpu-long: committed results, nothing trained; PROFILE=smoke trains tiny models in minutes)"
	@echo "make test          the test suite, then nbval over the smoke chapters (tests/notebooks)"
	@echo "make test-isa      nbval again with the CPU kernels forced onto AVX2 code paths (another machine)"
	@echo "make expectations  re-execute the smoke book and refresh nbval's expectations in tests/notebooks"
	@echo "make readme        README.md's result block and outputs/readme/headline.png from the committed runs"
	@echo "make bench         speed benchmark (writes outputs/bench/)"
	@echo "make sweep         train and evaluate a grid without the chapters (PROFILE=..., GRID=paper|core|beyond|all, EXECUTOR=local|ray)"
	@echo "make env           build the environment only; make env-extra adds the optional extras (ray, AutoAttack)"

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

# the tests and the smoke book need only the smoke profile's data, whatever PROFILE says
check-smoke-data: env
	@$(PY) -m lib check-data --profile smoke $(DATA_ARGS)

book: env $(RAY_ENV) check-data
	$(PY) -m lib.book --profile $(PROFILE)

site: env
	$(PY) -m lib.site --profile $(PROFILE)

readme: env
	$(PY) -m lib.readme

# pytest leaves one of the two cores of a small machine mostly idle, so the smoke runs that nbval's chapters
# read are trained and evaluated beside it, at a lower priority (python -m lib sweep: the executor that the
# chapters' results_for calls, into the same run cache). When both are done, nbval executes every smoke chapter
# on the book's training path: its call to the executor finds the runs there (and would train any that are
# missing). nbval waits for the sweep, so no chapter waits on another process's run lock (a compared cell
# would then print the wait). A failed sweep fails make test; its runs are kept for the next make test.
test: env check-smoke-data
	@log=$$(mktemp "$${TMPDIR:-/tmp}/sambook-smoke-runs.XXXXXX"); t0=$$(date +%s); \
	nice -n 10 $(PY) -m lib sweep --profile smoke --grid $(SMOKE_GRIDS) --executor local --no-progress \
	  > "$$log" 2>&1 & sweep=$$!; \
	$(PY) -m pytest -q tests; rc=$$?; echo "test: pytest ended after $$(( $$(date +%s) - t0 )) s"; \
	if [ $$rc -ne 0 ]; then echo "test: pytest failed; waiting for the smoke runs being trained beside it"; fi; \
	wait $$sweep; src=$$?; sed 's/^/test: /' "$$log"; rm -f "$$log"; \
	echo "test: the smoke runs were ready after $$(( $$(date +%s) - t0 )) s"; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; if [ $$src -ne 0 ]; then echo "test: the smoke sweep failed"; exit $$src; fi
	$(PY) -m pytest -q $(NBVAL)

# another machine's kernels: oneDNN and ATen limited to AVX2, and a fresh outputs folder of its own each
# time (so the smoke runs are trained again under those kernels, never read from the default run or from
# an earlier test-isa); the folder is removed afterwards
test-isa: env check-smoke-data
	@d=$$(mktemp -d "$${TMPDIR:-/tmp}/sambook-isa.XXXXXX") && echo "test-isa: outputs in $$d (removed afterwards)" && \
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 SAMBOOK_OUTPUTS=$$d $(PY) -m pytest -q $(NBVAL); \
	rc=$$?; rm -rf "$$d"; exit $$rc

expectations: env check-smoke-data
	$(PY) -m lib.book --profile smoke --expectations

bench: env
	$(PY) -m lib bench $(if $(filter-out auto,$(PROFILE)),--profile $(PROFILE),)

sweep: env $(RAY_ENV) check-data
	$(PY) -m lib sweep --profile $(PROFILE) --grid $(GRID) --executor $(EXECUTOR) $(DATA_ARGS)

smoke: env check-smoke-data
	$(PY) -m lib train --method sam --rho 0.1 --profile smoke

clean:
	rm -rf outputs/tmp outputs/.stamps outputs/cache
