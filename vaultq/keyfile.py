"""Which keyring an app uses when none is given: ``$VAULTQ_KEYS``, else (embedded broker
only) a 0600 key file beside the database, generated on first use, or (memory broker) a
keyring generated in memory.

The keyring side of ``App.keyring``: the app asks once, lazily, and keeps the answer.
A shared broker (Redis) never gets a generated key file: producers and workers on other
hosts could not share it, so it refuses to guess and says how to make keys.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vaultq.brokers.base import Broker
from vaultq.errors import ConfigurationError
from vaultq.keyring import Keyring, load_or_create_file

__all__ = ["embedded_key_path", "load_or_create_keyfile", "resolve_keyring"]

log = logging.getLogger("vaultq")


def resolve_keyring(
    app_name: str, broker: Broker, *, keys_in_env: bool = False
) -> tuple[Keyring, str]:
    """The keyring for an app without explicit keys, and where it came from (for
    ``vaultq check`` and the worker banner). ``keys_in_env``: the app found
    ``$VAULTQ_KEYS`` set when it was built (the environment is read at that edge, not
    here). Raises ``ConfigurationError`` for a shared broker without keys."""
    if keys_in_env:
        return Keyring.from_env("VAULTQ_KEYS"), "$VAULTQ_KEYS"
    if broker.capabilities.shared:
        raise ConfigurationError(
            f"app {app_name!r} uses a shared broker ({broker.url}) and has no keys. "
            "Run `vaultq keys generate --out vaultq.keys`, then set VAULTQ_KEYS=@vaultq.keys "
            "(or pass keyring=Keyring.from_file(...)) on producers and workers alike"
        )
    if not broker.capabilities.durable:
        # Nothing on a memory broker outlives this process, so neither need its keys:
        # a fresh keyring, never a key file in the working directory.
        return Keyring.generate(), "generated for the memory broker"
    path = embedded_key_path(broker)
    return load_or_create_keyfile(path), str(path)


def load_or_create_keyfile(path: Path) -> Keyring:
    """The keyring in ``path``, generated (0600) when missing, with a warning that says so."""
    keyring, created = load_or_create_file(path)
    if created:
        log.warning(
            "generated a new keyring for the embedded broker at %s (mode 0600); "
            "keep it with the database, and set VAULTQ_KEYS for shared brokers",
            path,
        )
    return keyring


def embedded_key_path(broker: Broker) -> Path:
    """``<db>.keys`` beside an embedded broker's database; ``./vaultq.keys`` otherwise."""
    db = broker.capabilities.local_path
    if db is None:
        return Path.cwd() / "vaultq.keys"
    db_path = Path(db)
    return db_path.with_name(db_path.stem + ".keys")
