# Two commands from a fresh clone: `make train` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CIFAR-10 JPEG ImageFolder for `make bench`, extracted from CIFAR10_TAR when missing.
CIFAR10_JPG ?= /tmp/cifar10-jpg
CIFAR10_TAR ?= ../shared/data/cifar10-jpg.tar.gz

.PHONY: install train test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## the default run: digits + scratch_cnn on the CPU; extra overrides via ARGS="..."
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)  ## the whole suite (slow real-data tests skip when their data is absent)
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(CIFAR10_JPG):
	mkdir -p $(dir $(CIFAR10_JPG)) && tar -xzf $(CIFAR10_TAR) -C $(dir $(CIFAR10_JPG))

bench: $(STAMP) $(CIFAR10_JPG)  ## one epoch of scratch_cnn on CIFAR-10 JPEGs: train.py vs a plain PyTorch loop
	$(BIN)/python benchmarks/train_throughput.py --data $(CIFAR10_JPG) $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
