"""Private files and directories: create them 0700/0600 whatever the umask, and judge
whether a secret file can be trusted the way OpenSSH judges a private key.

Used by the key file loader (``keyring.py``) and the embedded broker (``brokers/sqlite.py``),
which keep secrets or sealed jobs on disk. Nothing here reads a file's contents.

The trust rule (``docs/keys.md``) follows OpenSSH's ``StrictModes``: the file must be
owned by this user or root and not be accessible by group or others; every directory
above it must be owned by this user or root and not be writable by group or others,
because whoever can write a directory can rename another file into the key file's place.
A sticky directory (``/tmp``, mode 1777) is the one exception OpenSSH does not make and
we do: there only an entry's owner (or the directory's owner, itself root or this user)
can rename or delete it, and the entry below is checked in turn.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["private_dir", "untrusted_reason"]


def private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents with mode 0700, whatever the umask.

    Directories that already exist are left as they are (``untrusted_reason`` judges
    them when a key file is read). Raises ``OSError``.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it: not ours to chmod
        # mkdir applies the umask to 0700, which may take bits away; set it exactly.
        os.chmod(directory, 0o700)


def untrusted_reason(path: str | os.PathLike[str], st: os.stat_result) -> str | None:
    """Why the secret file at ``path`` (whose ``fstat`` is ``st``) must not be trusted,
    as a message that says what to run; None when it may be. Always None off POSIX."""
    if os.name != "posix":  # pragma: no cover - the checks are POSIX ownership and modes
        return None
    name = os.fspath(path)
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        return (
            f"key file {name} is owned by uid {st.st_uid}, not by this user (uid {uid}) or "
            f"root, so another user may have written it; check its contents, then run "
            f"`chown {uid} {name}`"
        )
    if st.st_mode & 0o077:
        return (
            f"key file {name} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {name}`"
        )
    for directory in _ancestors(name):
        try:
            dst = os.stat(directory)
        except OSError as exc:
            return f"cannot check directory {directory} of key file {name}: {exc.strerror}"
        if dst.st_uid not in (uid, 0):
            return (
                f"directory {directory} of key file {name} is owned by uid {dst.st_uid}, "
                f"not by this user (uid {uid}) or root, so its owner can replace the key "
                f"file; move the key file, or run `chown {uid} {directory}`"
            )
        if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
            return (
                f"directory {directory} of key file {name} is writable by group or others "
                f"(mode {stat.S_IMODE(dst.st_mode):04o}), so they can replace the key file; "
                f"run `chmod go-w {directory}`"
            )
    return None


def _ancestors(name: str) -> list[str]:
    """Every directory above the file, along the path as written and along the path with
    symlinks resolved (a symlink's own directory decides who can redirect it)."""
    seen: list[str] = []
    for start in (os.path.abspath(name), os.path.realpath(name)):
        current = os.path.dirname(start)
        while True:
            if current not in seen:
                seen.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return seen
