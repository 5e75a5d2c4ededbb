"""Print some packages' entries of a hashed lock (requirements/*.txt), hashes included.

    python .ci/pick_locked.py requirements/runtime.txt --drop hiredis,uvloop
    python .ci/pick_locked.py requirements/dev.txt --only pytest,pluggy,...

Used by .ci/test.sh to build the venv *without* the optional extras from the same locks
(so the versions and hashes are the ones every other leg installs; pip --require-hashes
then refuses anything a picked package needs and the file does not pin). An entry is a
``name==version`` line and its continuation lines; comments are left out.
"""

from __future__ import annotations

import argparse
import re
import sys

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def entries(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        start = _ENTRY.match(line)
        if start:
            current = found.setdefault(start[1].lower().replace("_", "-"), [])
            current.append(line)
        elif current is not None and line.startswith("    --hash="):
            current.append(line)
        else:
            current = None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lock")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--only", help="comma-separated names to print")
    which.add_argument("--drop", help="comma-separated names to leave out")
    args = parser.parse_args()
    with open(args.lock, encoding="utf-8") as handle:
        found = entries(handle.read())
    names = {n.strip().lower() for n in (args.only or args.drop).split(",") if n.strip()}
    unknown = names - found.keys()
    if unknown:
        print(f"{args.lock} has no entry for {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    keep = [n for n in found if (n in names) == bool(args.only)]
    for name in keep:
        print("\n".join(found[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
