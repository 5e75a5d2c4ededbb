"""vaultq: a small, hardened job queue (public names are re-exported here)."""

from __future__ import annotations

from vaultq.errors import *  # noqa: F403 - the error tree is public
