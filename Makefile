VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test run lint format install clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[talk,eval,captions,dev]'
	# Kyutai's reference implementation, for the equivalence tests only; it pins an older torch,
	# so it is installed without its dependencies (the modules the tests use need none of them).
	$(PY) -m pip install --no-deps moshi==0.2.13 einops
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -rs -n auto --dist loadfile

# Without a --backend in ARGS, serve defaults to auto: the best this machine runs in real time
# (see README, Models).
run: $(STAMP)
	$(VENV)/bin/assistant serve $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
