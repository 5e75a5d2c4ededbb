"""Key files on disk: atomic 0600 writes and race-free first creation.

Split from ``keyring.py``: the file mechanics, which know nothing of keys. Each helper
returns why it failed (``str``) instead of raising, so the caller raises its own
``KeyringError`` from a frame that holds no key material (``keyring.py``'s docstring).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vaultq.files import private_dir

__all__ = ["create_exclusive", "fsync_dir", "write_atomic"]


def create_exclusive(path: Path, data: bytes) -> bool | str:
    """Write ``data`` to ``path`` (0600, missing directories 0700) unless another process
    does first: whether this one did, or why it could not."""
    try:
        private_dir(path.parent)
        # Write a private temp file, then link it into place: link fails if another
        # process won the race, and then everyone uses the winner's keys.
        fd, tmp = tempfile.mkstemp(prefix=".vaultq-keys-", dir=path.parent)
    except OSError as exc:
        return str(exc.strerror)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    except OSError as exc:
        return str(exc.strerror)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def write_atomic(target: Path, data: bytes) -> str | None:
    """Write ``data`` to ``target`` (0600, temp file + fsync + rename + directory
    fsync); None, or why it failed."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    except OSError as exc:
        return str(exc.strerror)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit about intent
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        return str(exc.strerror)
    fsync_dir(target.parent)
    return None


def fsync_dir(directory: Path) -> None:
    # Make the rename durable; some filesystems refuse to open directories: best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
