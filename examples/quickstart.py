"""``python -m examples.quickstart``: the same as ``vaultq demo``.

Runs a worker on the embedded SQLite broker in a temporary directory, enqueues a few
real jobs (a report, a payment with a Secret field, one that times out, two that are
denied, one retried, one tampered with) and prints what happened to each.
"""

from __future__ import annotations

from vaultq.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
