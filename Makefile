# make demo | make cluster | make test | make bench   (each installs what is missing first); make stop
PY := .venv/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo cluster stop test test-cluster test-unit bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m stack demo

cluster: setup
	$(PY) -m stack cluster

# a demo or cluster whose runner died without stopping its services
stop:
	@if [ -x $(PY) ]; then $(PY) -m stack stop; else echo "nothing to stop (no .venv)"; fi

test: setup
	$(PY) -m pytest -m "not cluster" --durations=30

# the production topology's chaos tests (tests/test_cluster.py): ~10 minutes
test-cluster: setup
	$(PY) -m pytest -m cluster --durations=10

test-unit: setup
	$(PY) -m pytest -m "not stack and not spark and not browser and not cluster"

bench: setup
	$(PY) -m bench all

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf var/demo var/cluster tests/artifacts reco_plugin/_*.so spark_jobs/_*.so .venv/.reco-installed
