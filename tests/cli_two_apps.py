"""A module with two Apps: the loader must ask which one."""

from __future__ import annotations

import vaultq

first = vaultq.App("first")
second = vaultq.App("second")
