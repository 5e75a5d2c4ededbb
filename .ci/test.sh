#!/usr/bin/env bash
# The whole test command: installs everything into .venv, then runs every gate.
#   bash .ci/test.sh            (from the repository root; CI runs exactly this)
# Gates: ruff check, ruff format --check, mypy --strict vaultq, bandit, a grep for
# pickle/eval/exec in vaultq/, pytest (Python 3.11 + Django 5.2 with the django-tasks
# backport), and a Django 6 leg on Python >= 3.12 when such an interpreter is present.
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

say "installing vaultq[dev] into .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import vaultq, redis, cryptography, msgspec, anyio, django' \
  || { echo "installing .[dev] failed" >&2; exit 2; }

say "ruff check";          .venv/bin/ruff check vaultq tests benchmarks examples
say "ruff format --check"; .venv/bin/ruff format --check vaultq tests benchmarks examples
say "mypy --strict vaultq"; .venv/bin/mypy --strict vaultq
say "bandit";              .venv/bin/bandit -q -r vaultq
say "no pickle/eval/exec in vaultq/"
if grep -rnE --include='*.py' 'import pickle|pickle\.loads?\(|(^|[^_.a-zA-Z])(eval|exec)\(' vaultq; then
  echo "vaultq/ must not use pickle, eval or exec" >&2
  exit 1
fi

say "pytest (Python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
.venv/bin/python -m pytest -q -p no:cacheprovider

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
  .venv-django6/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  .venv-django6/bin/python -m pip install -q -e ".[dev]" "django>=6.0,<6.2" 2>&1 | grep -v '^WARNING: Location' || true
  .venv-django6/bin/python -m pytest -q -p no:cacheprovider tests/django
elif [ -d tests/django ]; then
  say "NOTICE: no Python >= 3.12 found: the Django 6 (django.tasks) leg was SKIPPED"
fi
say "all gates passed"
