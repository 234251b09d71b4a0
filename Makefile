# Two entry points for a fresh machine: `make quickstart` and `make test`. Both set up what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.openmix-installed

.PHONY: setup data test test-fast quickstart bench-mixers bench-train lint format clean

setup: $(STAMP)

# The venv is rebuilt when the package metadata or the pinned versions change.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist package, when apt-get is there and the files are missing.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "warning: could not install dataset-fashion-mnist; tests that need it are skipped"; \
	else \
		echo "note: Fashion-MNIST not found in $(FMNIST_DIR); install Debian's dataset-fashion-mnist or pass a data root"; \
	fi

test: setup data
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Vanilla, mixup, CutMix and FMix on Fashion-MNIST (2 epochs, 2 runs at a time): a table and plots in
# runs/quickstart/. Finished runs are kept: run it again to continue an interrupted quickstart.
quickstart: setup data
	$(PY) -m openmix.cli bench configs/grids/quickstart.yaml --runs-dir runs --parallel 2 --last 1

bench-train: setup
	$(PY) tools/bench_train.py

bench-mixers: setup
	$(PY) tools/bench_mixers.py

lint: setup
	$(PY) -m ruff check openmix tests tools
	$(PY) -m ruff format --check openmix tests tools

format: setup
	$(PY) -m ruff format openmix tests tools

clean:
	rm -rf $(VENV) runs .pytest_cache
