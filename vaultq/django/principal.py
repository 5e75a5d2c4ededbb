"""Map Django users and requests to vaultq principals.

Default mapping (override with ``VAULTQ["PRINCIPAL_MAPPER"] = "dotted.path"``, a callable
taking the user and returning a :class:`vaultq.Principal`):

- id ``user:<pk>``;
- roles: the names of the user's groups, plus ``staff`` and ``superuser`` for
  ``is_staff``/``is_superuser`` (a group named like those grants the role: groups are
  admin-controlled, name them accordingly);
- permissions: ``user.get_all_permissions()`` (``app_label.codename``);
- attrs: ``username`` (attrs are never logged);
- anonymous users map to ``Principal.anonymous()``; inactive users keep their id and
  get no roles or permissions.

The principal is a snapshot taken at enqueue and sealed into the job. To make revoking a
permission stop jobs already queued, use :func:`vaultq.django.policies.require_django_permission`,
which reads the database again before each attempt.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from vaultq.errors import ConfigurationError
from vaultq.jobs import current_job
from vaultq.principal import Principal

__all__ = [
    "acting_as",
    "current_principal",
    "default_principal_mapper",
    "principal_from_request",
    "principal_from_user",
]

_acting: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vaultq_django_acting_as", default=None
)


def default_principal_mapper(user: Any) -> Principal:
    """The default user -> Principal mapping (see the module docstring)."""
    pk = user.pk
    if not getattr(user, "is_active", True):
        return Principal(f"user:{pk}")
    roles: set[str] = set()
    groups = getattr(user, "groups", None)
    if groups is not None:
        roles.update(str(name) for name in groups.values_list("name", flat=True))
    if getattr(user, "is_staff", False):
        roles.add("staff")
    if getattr(user, "is_superuser", False):
        roles.add("superuser")
    permissions = {str(p) for p in user.get_all_permissions()}
    return Principal(
        f"user:{pk}",
        roles=frozenset(roles),
        permissions=frozenset(permissions),
        attrs={"username": str(user.get_username())},
    )


def principal_from_user(user: Any) -> Principal:
    """The principal for a Django user (``None`` and anonymous users: anonymous).

    Reads the database (groups, permissions): in async code call it through
    ``sync_to_async`` or use :func:`vaultq.django.aenqueue_on_commit`.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return Principal.anonymous()
    from vaultq.django.apps import get_config

    mapper = get_config().principal_mapper
    principal = mapper(user) if mapper is not None else default_principal_mapper(user)
    if not isinstance(principal, Principal):
        raise ConfigurationError(
            "VAULTQ['PRINCIPAL_MAPPER'] must return a vaultq.Principal, "
            f"not {type(principal).__name__}"
        )
    return principal


def principal_from_request(request: Any) -> Principal:
    """The principal for ``request.user`` (set by Django's AuthenticationMiddleware)."""
    return principal_from_user(getattr(request, "user", None))


@contextlib.contextmanager
def acting_as(who: Any) -> Iterator[Principal]:
    """Jobs enqueued inside the block (Django Tasks ``.enqueue()`` included) run as ``who``:
    a Principal, a user, or a request::

        with acting_as(request):
            send_receipt.enqueue(order_id=7)
    """
    if isinstance(who, Principal):
        principal = who
    elif hasattr(who, "META") and hasattr(who, "method"):
        principal = principal_from_request(who)
    else:
        principal = principal_from_user(who)
    token = _acting.set(principal)
    try:
        yield principal
    finally:
        _acting.reset(token)


def current_principal() -> Principal | None:
    """The principal set by :func:`acting_as`, else the running job's (a job enqueueing
    another passes its principal on), else None."""
    principal = _acting.get()
    if principal is not None:
        return principal
    try:
        return current_job().principal
    except ConfigurationError:
        return None
