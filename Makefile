# `make run` and `make test` each set up .venv when missing (or when pyproject.toml or requirements.lock
# changed) and run.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= INFO
export TOKENIZERS_PARALLELISM ?= false
export NO_MKDOCS_2_WARNING ?= 1
# flows/ and tasks/ are imported by name in processes Prefect and Dask start (serve, workers, resumed runs).
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# The ephemeral API starts slowly on a busy 2-core machine; the default 20 s is not always enough.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: run test lint install browser clean-data lock docs mutation

install: $(STAMP)

# Exactly the locked versions (nothing else), each checked against its hash (torch: the CPU wheel), then the project itself.
# uv installs the lock (seconds, where pip takes minutes); it finds torch's +cpu wheel where pip does here
# (PIP_FIND_LINKS, or pip's configured find-links), or set UV_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements.lock)
export UV_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell python3 -m pip config get global.find-links 2>/dev/null))
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q uv==$(UV_VERSION)
	.venv/bin/uv pip sync -q --python $(PY) --require-hashes requirements.lock
	.venv/bin/uv pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve requirements.lock from pyproject.toml's ranges and constraints.txt (the newest versions that fit).
lock: $(STAMP)
	$(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --extra test --extra docs --extra lock --extra mutation -c constraints.txt \
		-o requirements.lock pyproject.toml

run: $(STAMP)
	$(PY) -m flows.pipeline

# The UI test drives Debian's chromium (Playwright cannot download its own browser here).
browser:
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m mkdocs build --strict --quiet
	# two workers, one test file each at a time: half the tests wait on servers and subprocesses
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

# The documentation site, served at http://127.0.0.1:8000 while you edit docs/.
docs: $(STAMP)
	$(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000

# Mutation testing (cosmic-ray) of each module that has a session config in mutation/: every mutant is
# applied to the file in place, its tests run, and the file restored. Sequential; tens of minutes.
mutation: $(STAMP)
	for config in mutation/*.toml; do \
		session=$${config%.toml}.sqlite; rm -f $$session; \
		.venv/bin/cosmic-ray init $$config $$session && .venv/bin/cr-filter-operators $$session $$config && \
		$(PY) mutation/functions_filter.py $$session $$config && \
		HF_HUB_OFFLINE=1 .venv/bin/cosmic-ray exec $$config $$session && .venv/bin/cr-report $$session | tail -3 \
		|| exit 1; \
	done

clean-data:
	rm -rf data
