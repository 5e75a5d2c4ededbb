#!/usr/bin/env bash
# Refresh the hashed locks in requirements/ from pyproject.toml (+ requirements/build.in):
#   .venv/bin/pip install uv && bash requirements/refresh.sh
# then run `bash .ci/test.sh` and commit the changed locks. Pass `--upgrade-package NAME`
# (or `--upgrade`) through to move pinned versions; with no arguments uv keeps existing
# pins and only adds or removes what pyproject.toml now asks for.
#
# Both locks are "universal" (every platform, every Python >= 3.11, environment markers
# where the answer differs), so one dev lock serves the Python 3.11 + Django 5.2 leg and
# the Python >= 3.12 + Django 6 leg of .ci/test.sh alike.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
[ -x "$UV" ] || { echo "uv not found: .venv/bin/pip install uv" >&2; exit 2; }

header() {
  cat <<TXT
# $1
# Hashed lock (pip --require-hashes). Do not edit by hand; refresh with:
#   .venv/bin/pip install uv && bash requirements/refresh.sh
# Ranges live in pyproject.toml; this file pins the whole tree for reproducible installs.
TXT
}

compile() {  # compile OUT DESCRIPTION ARGS...
  local out=$1 desc=$2; shift 2
  local tmp; tmp=$(mktemp)
  cp "$out" "$tmp" 2>/dev/null || true  # existing pins are the starting point
  "$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command "bash requirements/refresh.sh" -o "$tmp" "$@"
  { header "$desc"; grep -v '^# Hashed lock\|^#   .venv/bin/pip install uv\|^# Ranges live' "$tmp"; } > "$out"
  rm -f "$tmp"
}

compile requirements/dev.txt \
  "vaultq[dev] + build backend: .ci/test.sh (both legs), day-to-day development" \
  pyproject.toml requirements/build.in --extra dev "$@"
compile requirements/runtime.txt \
  "vaultq[fast]'s runtime dependencies + build backend: the Dockerfile, production installs" \
  pyproject.toml requirements/build.in --extra fast "$@"
echo "refreshed requirements/dev.txt and requirements/runtime.txt"
