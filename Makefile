# Two commands do all set-up: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install system-packages demo test lint test-unit test-integration bench bench-scale bench-replay bench-registries bench-broker clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aidledger demo $(ARGS)

# Debian packages the tests use (infra/system-packages.txt): installed when missing, as root
system-packages:
	sh infra/system-packages.sh

test: $(STAMP) lint system-packages
	$(BIN)/python -m pytest tests $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --quiet --select F,E9 aidcore schemas streams projections connectors infra aidledger tests

test-unit: $(STAMP) system-packages
	$(BIN)/python -m pytest tests/unit $(ARGS)

test-integration: $(STAMP) system-packages
	$(BIN)/python -m pytest tests/integration $(ARGS)

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/aidledger bench $(ARGS)

# opt-in, Lampung scale: 10 million events replayed into fresh projections (needs ~7 GiB of free
# memory and ~15 minutes); ARGS="--events 200000" for a smoke run, --profile to sample it with py-spy
bench-scale: $(BENCH_STAMP)
	$(BIN)/python -m aidledger.bench_scale $(ARGS)

# the replay stage of `make bench` alone: 1,000,000 records projected end to end, then
# `aidledger audit replay` twice (ARGS="--records 100000" for a smoke run)
bench-replay: $(BENCH_STAMP)
	$(BIN)/python -m aidledger.bench_replay $(ARGS)

# opt-in: three registry extracts of 1,000,000 people imported, then the registries report timed
# (~10 minutes); ARGS="--people 20000" for a smoke run, --compare to time the in-memory report too
bench-registries: $(BENCH_STAMP)
	$(BIN)/python -m aidledger.bench_registries $(ARGS)

# opt-in: the embedded broker's fetch cost against the record batches a partition holds (why the
# alert latency grows after a long run); writes bench/results/broker.json
bench-broker: $(BENCH_STAMP)
	$(BIN)/python -m aidledger.bench_broker $(ARGS)

clean:
	rm -rf $(VENV) .aidledger *.egg-info .pytest_cache .hypothesis
