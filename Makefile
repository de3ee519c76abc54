# Two commands from a fresh clone: `make train` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make train` installs what the default run needs (the base); `make test` adds the tests' tools and
# every optional feature (pyproject's dev extra). Each stamp says that set is installed.
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
# The exact versions CI tested (`make constraints` rewrites it); pyproject.toml keeps the ranges.
CONSTRAINTS := constraints.txt
# The oldest versions pyproject.toml allows, one pkg==X per dependency; `make test-floors` proves them,
# on the oldest Python pyproject.toml allows (requires-python) when this machine has it.
FLOORS := .ci/floors.txt
FLOORS_VENV := .venv-floors
OLDEST_PYTHON := 3.10
FLOORS_PYTHON ?= $(or $(shell for p in python$(OLDEST_PYTHON) $$HOME/.pyenv/versions/$(OLDEST_PYTHON).*/bin/python3; do \
	$$p -c "" 2>/dev/null && echo $$p && break; done),$(PYTHON))
# The CIFAR-10 JPEG ImageFolder for `make bench`, extracted from CIFAR10_TAR when missing.
CIFAR10_JPG ?= /tmp/cifar10-jpg
CIFAR10_TAR ?= ../shared/data/cifar10-jpg.tar.gz

.PHONY: install install-dev train test test-fast test-slow test-trackers test-slurm test-all test-floors constraints lint format bench bench-tutorial bench-speedrun gpu-wheels gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(BASE_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e ".[dev]"
	touch $@ $(BASE_STAMP)

install: $(BASE_STAMP)  ## .venv with what `make train` needs (the optional features: docs/configuration.md#optional-features)

install-dev: $(DEV_STAMP)  ## .venv with the tests' tools and every optional feature (what `make test` installs)

train: $(BASE_STAMP)  ## the default run: digits + scratch_cnn on the CPU; extra overrides via ARGS="..."
	$(BIN)/python train.py $(ARGS)

# Three test processes (pytest-xdist) on two cores: most tests run one single-threaded torch, and many
# wait on processes they start (sweeps, DDP, the CLI); measured on 2 cores, 273 tests: one process
# ~430 s, two 273 s, three 241 s. `pytest tests/x.py` alone runs in one process, for debugging.
PYTEST_PROCESSES ?= 3

# The suite in pytest's own processes: every test but those that start Python interpreters (`process`:
# the commands as typed, sweeps, launchers, DDP), read real data or run long (`slow`), or need a
# tracking server (`tracker`) or a SLURM cluster (`slurm`). Those are `make test-slow`, `make
# test-trackers` and `make test-slurm`; CI runs all four.
test: $(DEV_STAMP)  ## the tests in pytest's processes (not slow, process, tracker or slurm), within 5 minutes on 2 cores
	$(BIN)/python -m pytest -n $(PYTEST_PROCESSES) -m "not slow and not process and not tracker and not slurm" $(ARGS)

# The commands as typed in their own interpreters (README's, sweeps, launchers, Optuna, DDP, SIGTERM
# and kill -9, the installed wheel) and the long or real-data runs (those skip without their data).
test-slow: $(DEV_STAMP)  ## the commands as typed in their own interpreters, real data, long runs
	$(BIN)/python -m pytest -n $(PYTEST_PROCESSES) -m "(slow or process) and not tracker and not slurm" $(ARGS)

# logger=mlflow against a real `mlflow server` it starts (train.py, a sweep, a resumed run, Optuna,
# eval.py, as typed), and the MLflow UI's runs table in headless Chromium (those two skip without
# chromium). One process: the tests share the server and their runs.
test-trackers: $(DEV_STAMP)  ## the trackers' tests: a real MLflow server, its UI in headless Chromium
	$(BIN)/python -m pytest -m tracker $(ARGS)

# Through a real SLURM scheduler: a one-machine cluster (scripts/local_slurm.py: munged, slurmctld and
# slurmd with their files in a temporary folder) started for the session and stopped after it, a batch
# job, the `hydra/launcher=slurm trainer=slurm` sweep, a requeued job, one DDP job of two tasks and a
# failing job (docs/cluster.md). As root it installs slurm-wlm and
# munge with apt-get when missing; otherwise the tests skip without them. One process: one cluster.
# A cap well above its ~3 minutes: a job the scheduler loses ends the run (Ctrl-C's summary, the cluster
# stopped) rather than CI's time.
SLURM_TEST_LIMIT_S ?= 900
test-slurm: $(DEV_STAMP)  ## the SLURM tests: a one-machine cluster it starts and stops; a sweep, a requeue, DDP through sbatch
	timeout --signal=INT --kill-after=60 $(SLURM_TEST_LIMIT_S) $(BIN)/python -m pytest -p no:xdist -m slurm $(ARGS)

test-all: $(DEV_STAMP)  ## every test but the SLURM ones: make test, test-slow and test-trackers in one pytest run
	$(BIN)/python -m pytest -n $(PYTEST_PROCESSES) -m "not slurm" $(ARGS)

# The inner loop while changing the code: the tests that start no Python process (`process`: a root
# script as typed, a sweep, DDP) and read no real data (`slow`), less the in-process ones that cost
# seconds of CPU each (`long`: whole runs, probes, tuning; a cheaper test of each area stays, and
# small_digits_run still trains, evaluates, predicts and exports). 359 of 446 tests; 351 of 427 took
# 64 s wall, 114 s of CPU on 2 idle AVX512 cores (docs/performance.md#the-test-suite).
test-fast: $(DEV_STAMP)  ## the fast tests, about a minute: not slow, not process, not long
	$(BIN)/python -m pytest -n $(PYTEST_PROCESSES) -m "not slow and not process and not long and not slurm" $(ARGS)

# A fresh venv holding exactly the floors (torch's is a download of ~3 GB when not cached).
$(FLOORS_VENV)/.installed: pyproject.toml $(FLOORS) .ci/check_floors.py
	rm -rf $(FLOORS_VENV)
	$(FLOORS_PYTHON) -m venv $(FLOORS_VENV)
	@$(FLOORS_VENV)/bin/python -c "import sys; print('test-floors on Python', sys.version.split()[0])"
	$(FLOORS_VENV)/bin/python -m pip install --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install -c $(FLOORS) -e ".[dev]"
	$(FLOORS_VENV)/bin/python .ci/check_floors.py $(FLOORS)
	touch $@

test-floors: $(FLOORS_VENV)/.installed  ## the fast tests on the oldest versions pyproject.toml allows
	$(FLOORS_VENV)/bin/python -m pytest -n $(PYTEST_PROCESSES) -m "not slow and not tracker and not slurm" $(ARGS)

constraints:  ## re-resolve constraints.txt: pyproject's ranges into a fresh venv, frozen
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --upgrade pip
	.venv-constraints/bin/python -m pip install -e ".[dev]"
	{ echo "# The exact versions \`make install\` installs (pip install -c constraints.txt): the newest that"; \
	  echo "# pyproject.toml's ranges allowed when \`make constraints\` made this file (a fresh venv, pip freeze)."; \
	  echo "# pyproject.toml keeps the ranges; \`make test-floors\` proves their lower ends."; \
	  .venv-constraints/bin/python -m pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-constraints

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(CIFAR10_JPG):
	mkdir -p $(dir $(CIFAR10_JPG)) && tar -xzf $(CIFAR10_TAR) -C $(dir $(CIFAR10_JPG))

bench: $(DEV_STAMP) $(CIFAR10_JPG)  ## speed on this machine: train.py vs a plain loop, loaders, inference, start-up, scaling (bench-results/)
	$(BIN)/python benchmarks/bench.py --data $(CIFAR10_JPG) $(ARGS)

bench-tutorial: $(DEV_STAMP) $(CIFAR10_JPG)  ## train.py vs the tutorial loop a user writes, 1, 2 and 5 epochs, whole commands
	$(BIN)/python benchmarks/vs_tutorial.py --data $(CIFAR10_JPG) $(ARGS)

bench-speedrun: $(DEV_STAMP) $(CIFAR10_JPG)  ## GPU: experiment=cifar10_speedrun vs airbench94 side by side (pip install airbench); no GPU: ARGS="--device cpu --runs 1"
	$(BIN)/python benchmarks/speedrun_vs_airbench.py --data $(CIFAR10_JPG) $(ARGS)

# A GPU machine that reaches no registry has torch, Lightning, timm, torchmetrics and TensorBoard but
# not Hydra, OmegaConf (and its antlr4 runtime) or airbench: their pure-Python wheels, at
# constraints.txt's versions, made here into .whl/ (git-ignored) to carry there.
GPU_WHEELS = hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 airbench==0.1.8
gpu-wheels: $(BIN)/python  ## here: .whl/, the wheels a bare GPU machine lacks (make gpu-check installs them there)
	$(BIN)/python -m pip wheel --no-deps --wheel-dir .whl $(GPU_WHEELS)

# On the GPU machine, with its own python3 (no venv): the `gpu` tests, the speed run against
# airbench94, experiment=cifar10_resnet18's epoch time, bf16 throughput against timm's benchmark.py;
# one table (gpu-check/gpu_check.md). ARGS="--cifar-tar cifar10-jpg.tar.gz --timm-benchmark benchmark.py".
gpu-check:  ## on a GPU machine: the gpu tests and the speed runs in one go, one table (benchmarks/gpu_check.py)
	python3 benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
