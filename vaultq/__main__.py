"""``python -m vaultq`` is the ``vaultq`` command."""

from __future__ import annotations

import sys

from vaultq.cli import main

sys.exit(main())
