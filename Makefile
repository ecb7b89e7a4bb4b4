# Two commands: `make demo` and `make test`. Both create .venv/ on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export RAY_AUTH_MODE := disabled
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test test-all venv bench gpu-check clean docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs what pip would (pip's indexes and constraints), unpacking and byte-compiling on every core;
	@# pip where uv cannot (UNET_DIST_INSTALLER=pip forces it). See scripts/venv.py.
	$(PY) scripts/venv.py
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m unet_dist demo $(if $(DATA),--data $(DATA),)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,bench]"
	$(PY) bench/pipeline.py
	$(PY) bench/train_overhead.py --steps 20 --repeats 5
	$(PY) bench/cpu_levers.py
	$(PY) bench/quality.py
	$(PY) bench/asha.py
	$(PY) bench/collect.py
	$(PY) bench/startup.py

# On a machine with one CUDA GPU: throughput, the NCCL backend path, packed fractional trials, predict --ray
# (under 8 minutes; bench/results/gpu.json). Without a GPU it says so in one line and exits 0.
gpu-check: $(STAMP)
	$(PY) bench/gpu.py

clean:
	rm -rf runs demo-runs .pytest_cache

docs: $(STAMP)
	UPDATE_DOCS=1 $(PY) -m pytest -q tests/test_docs.py
