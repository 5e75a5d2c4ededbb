"""Broker kinds the suites run against, and a private broker URL for one test.

Adding a broker kind to every broker-parametrized test is one line in :data:`KINDS`
(and, for a kind only one process can reach, one in :data:`ONE_PROCESS_KINDS`). Tests
ask for the ``broker_kind`` fixture (``conftest.py``), or for ``broker_url`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

KINDS: tuple[str, ...] = ("sqlite", "redis", "memory")
"""Every broker kind a broker-parametrized test runs against."""

ONE_PROCESS_KINDS: frozenset[str] = frozenset({"memory"})
"""Kinds whose store lives in one process: tests marked ``other_processes`` (a worker or
the CLI in a subprocess reaches the broker) leave them out."""

THIRD_PARTY = "thirdparty"
"""The broker installed as a separate package (``tests/support/thirdparty``): tests
marked ``third_party_broker`` (the broker suites) run against it too."""


def kind_params(
    *, other_processes: bool, third_party: bool, only: Sequence[str] | None = None
) -> list[object]:
    """``pytest.param`` per kind, Redis marked ``redis``; ``only``: the kinds a test
    reads the storage of (``@pytest.mark.broker_kinds("sqlite", "redis")``)."""
    kinds = [k for k in KINDS if not (other_processes and k in ONE_PROCESS_KINDS)]
    if third_party:
        kinds.append(THIRD_PARTY)
    if only is not None:
        unknown = set(only) - set(kinds)
        assert not unknown, f"broker_kinds marker names unknown kinds {unknown}"
        kinds = [k for k in kinds if k in only]
    return [pytest.param(k, marks=pytest.mark.redis) if k == "redis" else k for k in kinds]


def url_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A broker URL of ``kind`` private to one test: a database in its ``tmp_path``, or
    the session's private redis-server (tests keep apart by namespace). Asks for the
    redis-server or the third-party package only when the kind needs them."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/vaultq.db"
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    if kind == "memory":
        # A store named for this test: every broker and app of the test shares it.
        return f"memory://{request.getfixturevalue('unique_name')}"
    if kind == THIRD_PARTY:
        request.getfixturevalue("third_party_broker_installed")
        return f"{THIRD_PARTY}:///{tmp_path}/vaultq.db"
    raise AssertionError(f"no URL for broker kind {kind!r}: add it to tests/support/brokers.py")
