#!/usr/bin/env bash
# The whole test command: installs everything into .venv, then runs every gate.
#   bash .ci/test.sh            (from the repository root; CI runs exactly this)
# Installs come from the hashed lock requirements/dev.txt (pip --require-hashes), then
# vaultq itself with --no-deps: the same versions on every machine. Refresh the lock with
# requirements/refresh.sh; .ci/latest.sh tries the newest releases instead (not a gate).
# Gates: ruff check, ruff format --check, mypy --strict vaultq, mypy tests/, bandit,
# lint-imports (the import contracts in .importlinter), a grep for pickle/eval/exec in
# vaultq/, hadolint on the Dockerfile (warnings fail), pip-audit of the locks (SKIPPED,
# said out loud, where no vulnerability service answers), pytest (Python 3.11 + Django 5.2
# with the django-tasks backport, every optional extra installed: a missing one fails),
# a leg WITHOUT the optional extras (.venv-bare: requirements/runtime.txt less hiredis and
# uvloop, plus pytest; the core tests on Redis and SQLite, the CLI's errors for a missing
# extra, and the extras' tests skipping with their reason), and a Django 6 leg on
# Python >= 3.12 when such an interpreter is present.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
say() { printf '\n== %s\n' "$*"; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "vaultq needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 2
}

# The tests start their own private redis-server on a free loopback port.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (Debian package) for the tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed: install it (e.g. 'sudo apt-get install redis-server')" >&2
    exit 2
  fi
fi

# tests/test_node_producer.py runs the Node.js reference producer against a real worker.
if ! command -v node >/dev/null 2>&1 && ! command -v nodejs >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing nodejs (Debian package) for the cross-language envelope test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null
  else
    echo "node is not installed: tests/test_node_producer.py will SKIP (install it, e.g. 'sudo apt-get install nodejs')" >&2
  fi
fi

# tests/test_dashboard.py drives the system's Chromium (Playwright pointed at
# /usr/bin/chromium; no browser is ever downloaded by the tests).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (Debian package) for the dashboard's browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium is not installed at /usr/bin/chromium: install it (e.g. 'sudo apt-get install chromium chromium-driver')" >&2
    exit 2
  fi
fi

# install_locked VENV: the locked tree with hashes, then vaultq itself (editable, no deps,
# built by the locked setuptools so nothing unpinned is downloaded).
# quiet CMD...: run CMD; show its output (less pip's notes on absent local index folders)
# only when it fails, so setuptools' editable-install banner does not bury the gates.
quiet() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" = 0 ] || printf '%s\n' "$out" | grep -v '^WARNING: Location' >&2 || true
  return "$rc"
}
install_locked() {
  quiet "$1/bin/python" -m pip install -q --require-hashes -r requirements/dev.txt \
    || { echo "pip could not install requirements/dev.txt into $1 (see above)" >&2; exit 2; }
  quiet "$1/bin/python" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "pip could not install vaultq into $1 (see above)" >&2; exit 2; }
  "$1/bin/python" -c 'import vaultq, redis, cryptography, msgspec, anyio, django, pytest' \
    || { echo "installing requirements/dev.txt + vaultq into $1 failed" >&2; exit 2; }
}

say "installing requirements/dev.txt (hashed lock) + vaultq into .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
install_locked .venv

say "ruff check";          .venv/bin/ruff check vaultq tests benchmarks examples
say "ruff format --check"; .venv/bin/ruff format --check vaultq tests benchmarks examples
say "mypy --strict vaultq"; .venv/bin/mypy --strict vaultq
# tests/ too: strict, except that decorated tests, fixtures and redis-py's replies may be
# Any. Three runs, since each directory has its own conftest.py (one module name each) and
# tests import their helpers by bare name, as pytest's sys.path does.
say "mypy tests/"
MYPY_TESTS=(.venv/bin/mypy --allow-untyped-decorators --allow-subclassing-any
  --no-warn-return-any --allow-untyped-calls --follow-imports=silent)
"${MYPY_TESTS[@]}" tests/*.py tests/vectors/*.py
MYPYPATH=tests "${MYPY_TESTS[@]}" --explicit-package-bases tests/chaos
"${MYPY_TESTS[@]}" tests/django
say "bandit";              .venv/bin/bandit -q -r vaultq
say "lint-imports (.importlinter: the layering contracts)"; .venv/bin/lint-imports
say "no pickle/eval/exec in vaultq/"
if grep -rnE --include='*.py' 'import pickle|pickle\.loads?\(|(^|[^_.a-zA-Z])(eval|exec)\(' vaultq; then
  echo "vaultq/ must not use pickle, eval or exec" >&2
  exit 1
fi
say "hadolint Dockerfile";  .venv/bin/hadolint --failure-threshold warning Dockerfile
say "pip-audit (requirements/dev.txt, requirements/runtime.txt)"
.venv/bin/python .ci/audit.py requirements/dev.txt requirements/runtime.txt

say "pytest (Python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
# tests/conftest.py stops the session if an optional extra is missing here.
.venv/bin/python -m pytest -q -p no:cacheprovider

# `pip install vaultq` without extras: the same locks (hashes), none of the extras'
# packages; tests/conftest.py stops the session if one is there after all.
say "pytest without the optional extras (.venv-bare: requirements/runtime.txt less hiredis/uvloop, + pytest)"
[ -x .venv-bare/bin/python ] || "$PYTHON" -m venv .venv-bare
BARE_LOCK=.venv-bare/requirements-bare.txt
{ .venv/bin/python .ci/pick_locked.py requirements/runtime.txt --drop hiredis,uvloop
  .venv/bin/python .ci/pick_locked.py requirements/dev.txt \
    --only pytest,pytest-timeout,iniconfig,packaging,pluggy,pygments,colorama
} > "$BARE_LOCK"
quiet .venv-bare/bin/python -m pip install -q --require-hashes -r "$BARE_LOCK" \
  || { echo "pip could not install $BARE_LOCK into .venv-bare (see above)" >&2; exit 2; }
quiet .venv-bare/bin/python -m pip install -q --no-deps --no-build-isolation -e . \
  || { echo "pip could not install vaultq into .venv-bare (see above)" >&2; exit 2; }
# -rs: every skip says which extra it wanted. The extras' own tests (metrics, tracing,
# observability) are listed to show they skip here, not fail.
VAULTQ_TESTS_WITHOUT_EXTRAS=1 .venv-bare/bin/python -m pytest -q -p no:cacheprovider -rs \
  tests/test_worker.py tests/test_enqueue_typed.py tests/test_broker_contract.py \
  tests/test_envelope_e2e.py tests/test_cli.py tests/test_cli_monitor.py tests/test_monitor.py \
  tests/test_health.py tests/test_health_broker.py tests/test_public_api.py \
  tests/test_metrics.py tests/test_tracing.py tests/test_observability.py

# Django 6 (django.tasks) needs Python >= 3.12: run the Django tests there when we can.
PY6=""
for cand in python3.13 python3.12 "$HOME/.pyenv/versions/3.13.0/bin/python3" "$HOME/.pyenv/versions/3.12.1/bin/python3"; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    PY6=$(command -v "$cand"); break
  fi
done
if [ -n "$PY6" ] && [ -d tests/django ]; then
  say "Django 6 leg on $("$PY6" --version)"
  [ -x .venv-django6/bin/python ] || "$PY6" -m venv .venv-django6
  # The same universal lock: its markers pick Django 6 (no backport) on Python >= 3.12.
  install_locked .venv-django6
  .venv-django6/bin/python -c 'import django, sys; sys.exit(django.VERSION < (6,))' \
    || { echo "the Django 6 leg did not get Django 6 from requirements/dev.txt" >&2; exit 2; }
  .venv-django6/bin/python -m pytest -q -p no:cacheprovider tests/django
elif [ -d tests/django ]; then
  say "NOTICE: no Python >= 3.12 found: the Django 6 (django.tasks) leg was SKIPPED"
fi
say "all gates passed"
