"""Policies that consult Django's database when they run.

``vaultq.require_permission`` checks the permissions sealed into the job at enqueue (a
snapshot). :func:`require_django_permission` looks the user up again at every check, so a
permission removed (or a user deactivated) after enqueue makes the job DENIED.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async

from vaultq.errors import InvalidArgument
from vaultq.policy import PolicyRequest, Rule, rule

__all__ = ["require_django_permission"]


def _user_has(user_id: str, perms: tuple[str, ...]) -> bool:
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections

    if not user_id.startswith("user:"):
        return False
    model: Any = get_user_model()
    try:
        user = model._default_manager.get(pk=user_id.removeprefix("user:"))
    except (model.DoesNotExist, ValueError, TypeError):
        return False
    finally:
        close_old_connections()
    return bool(user.is_active and user.has_perms(perms))


def require_django_permission(*perms: str) -> Rule:
    """Allow when the principal's user exists, is active and has every permission in
    ``perms`` right now, per Django's auth backends (``user.has_perms``)."""
    if not perms or not all(isinstance(p, str) and "." in p for p in perms):
        raise InvalidArgument(
            "require_django_permission() takes permissions as 'app_label.codename' strings, "
            "e.g. require_django_permission('orders.refund')"
        )
    names = ", ".join(repr(p) for p in perms)

    @rule(name=f"require_django_permission({names})")
    async def check(request: PolicyRequest) -> bool:
        principal = request.principal
        if principal is None or principal.is_anonymous:
            return False
        # thread_sensitive=False: a policy check must not queue behind the worker's
        # other sync work; the function closes its own connection.
        return await sync_to_async(_user_has, thread_sensitive=False)(principal.id, perms)

    return check
