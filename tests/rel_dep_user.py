"""An app module whose own import fails: it needs ``rel_dep``, which is not installed.

Its name starts with the missing module's name on purpose: the loader once mistook the
missing dependency for the app module itself ("no such module").
"""

from __future__ import annotations

import rel_dep  # type: ignore[import-not-found]  # noqa: F401

import vaultq

app = vaultq.App("rel-dep-user")
