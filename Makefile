# make demo | make test | make bench   (each installs what is missing first)
PY := .venv/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: setup demo test test-unit bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m stack demo

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m "not stack and not spark and not browser"

bench: setup
	$(PY) -m bench all

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf var/demo tests/artifacts
