"""Which broker serves which URL scheme: the one place schemes are registered.

A broker is a class (or any callable) taking ``(url, *, namespace=...)`` and returning a
:class:`~vaultq.brokers.base.Broker`. Brokers register under the entry point group
``vaultq.brokers``, one entry point per URL scheme, so a third-party broker installs
as a package::

    # the broker package's pyproject.toml
    [project.entry-points."vaultq.brokers"]
    postgres = "vaultq_postgres:PostgresBroker"

vaultq declares its own brokers the same way (``pyproject.toml``) and keeps the same
table here (:data:`BUILTIN_BROKERS`) so a checkout that was never installed still
works. A built-in scheme always goes to the built-in broker: an installed package cannot
take ``redis://`` or ``sqlite://`` over (an entry point that tries is ignored with a
warning).

Where the scheme comes from: only the operator's configuration (the ``broker=`` URL
given to ``App``, ``$VAULTQ_BROKER``, ``VAULTQ['BROKER_URL']``). Nothing read from the
broker -- job ids, envelopes, results, dead letters -- ever names a broker or a module
to import: an entry point is loaded only because the operator's URL asked for its
scheme, and only that one (the others are not imported).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import import_module, metadata
from urllib.parse import urlsplit

from vaultq.brokers.base import Broker
from vaultq.errors import ConfigurationError

__all__ = [
    "BUILTIN_BROKERS",
    "ENTRY_POINT_GROUP",
    "BrokerFactory",
    "broker_from_url",
    "registered_schemes",
]

log = logging.getLogger("vaultq.brokers")

ENTRY_POINT_GROUP = "vaultq.brokers"
"""The entry point group brokers register under; the entry point's name is the scheme."""

BrokerFactory = Callable[..., Broker]
"""A broker class or factory: called as ``factory(url, namespace=namespace)``."""

_REDIS = "vaultq.brokers.redis:RedisBroker"
_SQLITE = "vaultq.brokers.sqlite:SqliteBroker"
_MEMORY = "vaultq.brokers.memory:MemoryBroker"

BUILTIN_BROKERS: dict[str, str] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis+cluster": _REDIS,
    "rediss+cluster": _REDIS,
    "redis+sentinel": _REDIS,
    "rediss+sentinel": _REDIS,
    "sqlite": _SQLITE,
    "memory": _MEMORY,
}
"""Scheme -> ``module:attribute`` of vaultq's own brokers (also declared as entry points
in ``pyproject.toml``; adding a built-in broker is one line here and one there)."""

# RFC 3986 scheme syntax, lower-cased (schemes are case-insensitive).
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _installed() -> dict[str, list[metadata.EntryPoint]]:
    """Entry points of the group by scheme (several when packages disagree)."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name.lower(), []).append(ep)
    return found


def registered_schemes() -> dict[str, str]:
    """Every scheme a broker is registered for -> its ``module:attribute``: the built-in
    table plus installed entry points (a built-in scheme keeps its built-in broker; an
    entry point claiming one is reported with a warning here)."""
    schemes = dict(BUILTIN_BROKERS)
    for scheme, eps in _installed().items():
        if scheme in BUILTIN_BROKERS:
            for ep in eps:
                if ep.value != BUILTIN_BROKERS[scheme]:
                    log.warning(
                        "ignoring the %s entry point %r = %r: the %s:// scheme belongs to "
                        "vaultq's built-in broker; register the broker under a scheme of its own",
                        ENTRY_POINT_GROUP,
                        ep.name,
                        ep.value,
                        scheme,
                    )
        elif _SCHEME.fullmatch(scheme):
            schemes[scheme] = " | ".join(sorted({ep.value for ep in eps}))
    return dict(sorted(schemes.items()))


def _load_target(target: str) -> BrokerFactory:
    module, _, attr = target.partition(":")
    obj: object = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigurationError(f"broker {target!r} is not a class or callable")
    return obj


def _factory_for(scheme: str) -> BrokerFactory:
    if scheme in BUILTIN_BROKERS:
        # Built-in schemes never consult installed packages (nor pay for the scan).
        return _load_target(BUILTIN_BROKERS[scheme])
    eps = _installed().get(scheme, [])
    if not eps:
        known = ", ".join(f"{s}://" for s in registered_schemes())
        raise ConfigurationError(
            f"unsupported broker URL scheme {scheme!r}: registered schemes are {known} "
            "(e.g. redis://host:6379/0 or sqlite:///path/to/vaultq.db); a third-party broker "
            f"registers its scheme under the {ENTRY_POINT_GROUP!r} entry point group: is its "
            "package installed in this environment?"
        )
    if len({ep.value for ep in eps}) > 1:
        names = ", ".join(sorted({ep.value for ep in eps}))
        raise ConfigurationError(
            f"the broker URL scheme {scheme}:// is registered by several installed packages "
            f"({names}): uninstall all but one"
        )
    try:
        loaded: object = eps[0].load()
    except Exception as exc:  # any import-time failure of a third-party package
        raise ConfigurationError(
            f"the broker for {scheme}:// ({eps[0].value}) failed to import: {exc!r}; "
            "reinstall its package or fix its dependencies"
        ) from exc
    if not callable(loaded):
        raise ConfigurationError(f"broker {eps[0].value!r} is not a class or callable")
    return loaded


def broker_from_url(url: str, *, namespace: str) -> Broker:
    """Build the broker registered for ``url``'s scheme: built in are ``redis://``,
    ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://`` (and their
    ``rediss+`` TLS forms), ``sqlite:///`` and ``memory://`` (in-memory, one process:
    tests; see ``vaultq/brokers/memory.py``); installed packages add more through the
    ``vaultq.brokers`` entry point group.

    Raises ConfigurationError for a scheme nobody registered (the message lists the
    registered ones) or a broker that does not implement the protocol.
    """
    scheme = urlsplit(url).scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        raise ConfigurationError(
            f"broker URL {url.split('@')[-1]!r} has no scheme: write e.g. "
            "redis://host:6379/0 or sqlite:///path/to/vaultq.db"
        )
    broker = _factory_for(scheme)(url, namespace=namespace)
    if not isinstance(broker, Broker):
        raise ConfigurationError(
            f"the broker registered for {scheme}:// built a {type(broker).__name__}, which "
            "does not implement vaultq.brokers.Broker (see vaultq/brokers/base.py)"
        )
    return broker
