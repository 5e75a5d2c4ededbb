#!/usr/bin/env bash
# Early warning: vaultq against the NEWEST release of every dependency, not the lock.
#   bash .ci/latest.sh [PYTEST ARGS...]      (from the repository root; e.g. -m "not slow")
# Builds a scratch venv (default /tmp/vaultq-latest; LATEST_VENV=... to move it), installs
# vaultq[dev] with `pip install --upgrade --upgrade-strategy eager` (the newest releases
# pyproject.toml's ranges allow, which is what a user installing vaultq gets), prints
# which dependency moved against requirements/dev.txt, runs ruff, mypy --strict and
# pytest, and prints what broke.
#
# It never fails: exit 0 whatever it finds (exit 2 only if the scratch venv cannot be
# built), because a new upstream release must not turn CI red for everyone. .ci/run does
# NOT call it; run it by hand (or on a schedule) and fix what it reports, then refresh the
# lock (requirements/refresh.sh --upgrade) so CI moves to the new releases on purpose.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LATEST_VENV:-/tmp/vaultq-latest}
LOG=${LATEST_LOG:-$VENV.log}   # pip's, then pytest's full output
say() { printf '\n== %s\n' "$*"; }

say "scratch venv $VENV: newest releases of vaultq[dev]'s dependencies"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || exit 2
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location'
# setuptools is named so the build backend the locks pin is tried at its newest too.
if ! "$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" setuptools \
    >"$LOG" 2>&1; then
  grep -v '^WARNING: Location' "$LOG" | tail -20
  echo "latest: could not install the newest releases (see above); nothing was tested"
  exit 0
fi

say "moved against requirements/dev.txt"
"$VENV/bin/python" - requirements/dev.txt <<'PY'
import json, re, subprocess, sys
from packaging.markers import Marker
from packaging.utils import canonicalize_name

locked = {}
pin = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)(?: ; ([^\\]+?))? \\$")
for line in open(sys.argv[1]):
    m = pin.match(line)
    if m and (not m.group(3) or Marker(m.group(3)).evaluate()):
        locked[canonicalize_name(m.group(1))] = m.group(2)
out = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"],
                     capture_output=True, text=True, check=True).stdout
now = {canonicalize_name(p["name"]): p["version"] for p in json.loads(out)}
from packaging.version import Version
moved = sorted((n, locked[n], now[n]) for n in locked if n in now and now[n] != locked[n])
newer = 0
for name, old, new in moved:
    if Version(new) > Version(old):
        newer += 1
        print(f"moved: {name} {old} -> {new}")
    else:
        print(f"older: {name} {new} installed, {old} locked (held back by a range?)")
for name in sorted(set(now) - set(locked) - {"vaultq"}):
    print(f"new:   {name} {now[name]} (not in the lock)")
for name in sorted(set(locked) - set(now)):
    print(f"gone:  {name} {locked[name]} (locked, no longer installed)")
print(f"latest: {newer} of {len(locked)} locked dependencies have a newer release")
PY

status=0
say "ruff check (newest ruff)"
"$VENV/bin/ruff" check vaultq tests benchmarks examples || status=1
say "mypy --strict vaultq (newest mypy and stubs)"
"$VENV/bin/mypy" --strict --cache-dir "$VENV/.mypy_cache" vaultq || status=1
say "pytest (newest releases)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" >"$LOG" 2>&1 || status=1
grep -E '^(FAILED|ERROR) |^E  +[A-Za-z]*(Error|Warning)|[0-9]+ (passed|failed)' "$LOG" | head -60

if [ "$status" = 0 ]; then
  say "latest: everything passes on the newest releases"
else
  say "latest: BROKEN on the newest releases (see the FAILED lines above; log: $LOG)"
  echo "This is a report, not a gate: fix the code, or add an upper bound in pyproject.toml"
  echo "with the reason beside it, then refresh the lock."
fi
exit 0
