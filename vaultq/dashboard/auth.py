"""Users, password hashes, sessions and CSRF tokens of the standalone dashboard.

Users come from a file (``--users FILE``) or the ``VAULTQ_DASHBOARD_USERS`` variable, one
per line::

    alice:view,operate:scrypt$16384$8$1$<salt>$<hash>
    bob:view:scrypt$16384$8$1$<salt>$<hash>

``view`` reads every page; ``operate`` also retries and purges dead letters; ``decrypt``
may show a job's result value when the server runs with ``--allow-decrypt``. Hashes are
scrypt from :mod:`hashlib` (``vaultq dashboard hash-password`` makes one); no plaintext
password is ever stored or logged.

A session is a cookie holding the user, an expiry and a CSRF token, authenticated with
HMAC-SHA256 under a key that lives only in the server process (or ``--session-key-file``
for several replicas): it cannot be forged or extended, and every POST must carry the
session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import msgspec

from vaultq.errors import ConfigurationError

__all__ = [
    "PERMISSIONS",
    "USERS_ENV",
    "Session",
    "Sessions",
    "User",
    "check_login",
    "hash_password",
    "load_users",
    "parse_users",
    "verify_password",
]

USERS_ENV = "VAULTQ_DASHBOARD_USERS"
PERMISSIONS = frozenset({"view", "operate", "decrypt"})

# scrypt parameters: 16 MiB of memory and ~50 ms per check on a server core.
_N, _R, _P = 2**14, 8, 1
_SESSION_SECONDS = 8 * 3600


class User(msgspec.Struct, frozen=True):
    name: str
    permissions: frozenset[str]
    password_hash: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` for ``password``."""
    if not password:
        raise ConfigurationError("an empty password cannot be used; choose one")
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 2**20)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a ``hash_password`` string."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if not (2**10 <= n_ <= 2**20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=n_, r=r_, p=p_, maxmem=256 * 2**20,
            dklen=len(expected),
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A hash computed once, checked against when the user name is unknown, so a wrong name
# costs the same time as a wrong password (no user enumeration by timing).
_DUMMY = hash_password("x", salt=b"\0" * 16)


def check_login(users: dict[str, User], name: str, password: str) -> User | None:
    user = users.get(name)
    ok = verify_password(password, user.password_hash if user else _DUMMY)
    return user if ok and user is not None else None


def parse_users(text: str, *, source: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[0] or not parts[2].startswith("scrypt$"):
            raise ConfigurationError(
                f"{source} line {number}: expected NAME:PERMISSIONS:HASH (HASH from "
                "`vaultq dashboard hash-password`)"
            )
        name, perms, digest = parts
        wanted = frozenset(p.strip() for p in perms.split(",") if p.strip())
        unknown = wanted - PERMISSIONS
        if unknown or not wanted:
            raise ConfigurationError(
                f"{source} line {number}: permissions must be some of view, operate, decrypt "
                f"(got {perms!r})"
            )
        users[name] = User(name, wanted | {"view"}, digest)
    if not users:
        raise ConfigurationError(f"{source} names no users; add NAME:view:HASH lines")
    return users


def load_users(path: str | None, env_text: str | None = None) -> dict[str, User]:
    """Users from ``path`` or, without one, from ``env_text`` (the value of
    ``$VAULTQ_DASHBOARD_USERS``, read by the command line)."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigurationError(f"no users file at {path}")
        if file.stat().st_mode & 0o077:
            raise ConfigurationError(
                f"{path} is readable by other users: chmod 600 it (it holds password hashes)"
            )
        return parse_users(file.read_text(encoding="utf-8"), source=path)
    text = env_text
    if not text:
        raise ConfigurationError(
            f"the dashboard needs users: --users FILE or ${USERS_ENV} (lines "
            "NAME:view[,operate][,decrypt]:HASH; make a HASH with `vaultq dashboard hash-password`)"
        )
    return parse_users(text.replace(";", "\n"), source=f"${USERS_ENV}")


class Session(msgspec.Struct, frozen=True):
    user: str
    expires: float
    csrf: str


class Sessions:
    """Signed session cookies (HMAC-SHA256)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        # Sessions signed out before they expire (by their CSRF token, unique per session):
        # a copied cookie stops working at sign-out, in this process.
        self._ended: dict[str, float] = {}

    def issue(self, user: str) -> tuple[str, Session]:
        session = Session(user, time.time() + _SESSION_SECONDS, secrets.token_urlsafe(24))
        body = _b64(msgspec.json.encode(session))
        return f"{body}.{self._mac(body)}", session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            session = msgspec.json.decode(_unb64(body), type=Session)
        except (msgspec.DecodeError, ValueError):
            return None
        now = time.time()
        if session.expires <= now or session.csrf in self._ended:
            return None
        return session

    def end(self, session: Session) -> None:
        """Sign ``session`` out for good (until it would have expired anyway)."""
        now = time.time()
        self._ended = {k: t for k, t in self._ended.items() if t > now}
        self._ended[session.csrf] = session.expires

    def login_token(self, nonce: str) -> str:
        """CSRF token of the login form, bound to a pre-session cookie ``nonce``."""
        return self._mac("login:" + nonce)

    def _mac(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())
