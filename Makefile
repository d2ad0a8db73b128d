# `make run` and `make test` each set up .venv when missing (or when pyproject.toml changed) and run.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= INFO
export TOKENIZERS_PARALLELISM ?= false
# flows/ and tasks/ are imported by name in processes Prefect and Dask start (serve, workers, resumed runs).
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# The ephemeral API starts slowly on a busy 2-core machine; the default 20 s is not always enough.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: run test lint install browser clean-data

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the pinned CPU wheel: letting the resolver choose pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m flows.pipeline

# The UI test drives Debian's chromium (Playwright cannot download its own browser here).
browser:
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null

test: $(STAMP) browser
	$(PY) -m ruff check .
	# two workers, one test file each at a time: half the tests wait on servers and subprocesses
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

clean-data:
	rm -rf data
