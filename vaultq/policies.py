"""The policy vocabulary: the request a policy sees, its decision, and the built-in
policies (helpers, ``all_of``/``any_of`` composites, named rules) with their readable names.

:mod:`vaultq.policy` re-exports all of it and adds :func:`~vaultq.policy.evaluate`, which
runs a policy the way vaultq does (fail closed, bounded, audited). Nothing here runs a
policy or writes a log line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal, overload

import msgspec

from vaultq.errors import ConfigurationError
from vaultq.principal import Principal

__all__ = [
    "FACTORIES",
    "AllOf",
    "AllowAll",
    "AllowSigners",
    "AnyOf",
    "Decision",
    "DenyAll",
    "MemberFailed",
    "Policy",
    "PolicyBase",
    "PolicyRequest",
    "RequireAnyPermission",
    "RequireAnyRole",
    "RequireAuthenticated",
    "RequirePermission",
    "RequireRole",
    "Rule",
    "all_of",
    "allow_all",
    "allow_signers",
    "any_of",
    "callable_name",
    "deny_all",
    "ensure_policy",
    "non_bool_reason",
    "policy_name",
    "require_any_permission",
    "require_any_role",
    "require_authenticated",
    "require_permission",
    "require_role",
    "rule",
]


class PolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a policy may look at.

    ``signer_id`` is the key id that signed the envelope (at enqueue: the producer's
    active signer id, ``""`` if none). ``attempt`` is 1-based in the worker and 0 at
    enqueue.
    """

    principal: Principal | None
    payload: Any
    task: str
    signer_id: str
    attempt: int
    job_id: str
    stage: Literal["enqueue", "run", "result"]
    """``"result"``: a reader asks for a finished job's result (``JobHandle.result(reader=,
    policy=)``); ``payload`` is then None."""


Policy = Callable[[PolicyRequest], bool | Awaitable[bool]]
"""A callable answering ``True`` (allow) or ``False`` (deny), sync or async."""


class Decision(msgspec.Struct, frozen=True):
    """The outcome of :func:`evaluate`.

    ``policy`` is the evaluated policy's name; ``reason`` is one of ``"allowed"``,
    ``"denied"``, ``"error"`` or ``"timeout"`` (safe to show and to store).
    """

    allowed: bool
    policy: str
    reason: str


class MemberFailed(Exception):
    """A member of a composite raised or answered a non-bool.

    Carries only safe names: the member's policy name and the error's class name. The
    original exception stays chained as ``__cause__`` and is never logged.
    """

    def __init__(self, member: str, error: str) -> None:
        super().__init__(member, error)
        self.member = member
        self.error = error


# --------------------------------------------------------------------------- helpers


class PolicyBase(msgspec.Struct, frozen=True):
    """Immutable policy objects whose ``repr`` is their audit name."""

    def __call__(self, request: PolicyRequest) -> bool | Awaitable[bool]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self._name()

    def _name(self) -> str:
        raise NotImplementedError


def _args(items: tuple[str, ...]) -> str:
    return ", ".join(repr(item) for item in items)


def _names(kind: str, items: tuple[str, ...]) -> tuple[str, ...]:
    # Fail at definition time: an empty list would allow everyone (ALL of nothing) or
    # nobody, and a bare list/set passed as one argument is a classic slip.
    if not items:
        raise ConfigurationError(f"{kind} needs at least one name, e.g. {kind}('admin')")
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigurationError(
                f"{kind} takes non-empty strings as separate arguments; "
                f"got a {type(item).__name__} (unpack lists with *names)"
            )
    return tuple(dict.fromkeys(items))  # dedupe, keep order for a stable name


class AllowAll(PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        return True

    def _name(self) -> str:
        return "allow_all"


class DenyAll(PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        return False

    def _name(self) -> str:
        return "deny_all"


allow_all: Policy = AllowAll()
"""Allows every request. Audited like any other policy."""
deny_all: Policy = DenyAll()
"""Denies every request (a task that must never run from the queue)."""


class RequireAuthenticated(PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and bool(principal.id) and not principal.is_anonymous

    def _name(self) -> str:
        return "require_authenticated()"


class RequireRole(PolicyBase, frozen=True):
    roles: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and all(r in principal.roles for r in self.roles)

    def _name(self) -> str:
        return f"require_role({_args(self.roles)})"


class RequireAnyRole(PolicyBase, frozen=True):
    roles: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and not principal.roles.isdisjoint(self.roles)

    def _name(self) -> str:
        return f"require_any_role({_args(self.roles)})"


class RequirePermission(PolicyBase, frozen=True):
    permissions: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and all(p in principal.permissions for p in self.permissions)

    def _name(self) -> str:
        return f"require_permission({_args(self.permissions)})"


class RequireAnyPermission(PolicyBase, frozen=True):
    permissions: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and not principal.permissions.isdisjoint(self.permissions)

    def _name(self) -> str:
        return f"require_any_permission({_args(self.permissions)})"


class AllowSigners(PolicyBase, frozen=True):
    signer_ids: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        return request.signer_id in self.signer_ids

    def _name(self) -> str:
        return f"allow_signers({_args(self.signer_ids)})"


def require_authenticated() -> Policy:
    """Allow when a principal is present and is not anonymous."""
    return RequireAuthenticated()


def require_role(*roles: str) -> Policy:
    """Allow when the principal has ALL of ``roles``. No principal denies."""
    return RequireRole(_names("require_role", roles))


def require_any_role(*roles: str) -> Policy:
    """Allow when the principal has AT LEAST ONE of ``roles``. No principal denies."""
    return RequireAnyRole(_names("require_any_role", roles))


def require_permission(*permissions: str) -> Policy:
    """Allow when the principal has ALL of ``permissions``. No principal denies."""
    return RequirePermission(_names("require_permission", permissions))


def require_any_permission(*permissions: str) -> Policy:
    """Allow when the principal has AT LEAST ONE of ``permissions``. No principal denies."""
    return RequireAnyPermission(_names("require_any_permission", permissions))


def allow_signers(*signer_ids: str) -> Policy:
    """Allow when the envelope was signed by one of these key ids.

    At enqueue the signer is the producer's active signing key id; in the worker it is
    the verified signer of the envelope, so this pins which services may submit a task.
    """
    return AllowSigners(_names("allow_signers", signer_ids))


# ------------------------------------------------------------------------ composites


def _call_member(member: Policy, request: PolicyRequest) -> bool | Awaitable[bool]:
    try:
        return member(request)
    except MemberFailed:
        raise  # a nested composite already named the innermost failing member
    except Exception as exc:
        raise MemberFailed(policy_name(member), type(exc).__name__) from exc


async def _await_member(member: Policy, pending: Awaitable[bool]) -> object:
    try:
        return await pending
    except MemberFailed:
        raise
    except Exception as exc:
        raise MemberFailed(policy_name(member), type(exc).__name__) from exc


def _member_answer(member: Policy, result: object) -> bool:
    # Never truthiness: a policy answering None or "no" is a bug and must deny.
    if isinstance(result, bool):
        return result
    raise MemberFailed(policy_name(member), non_bool_reason(result))


class _Composite(PolicyBase, frozen=True):
    policies: tuple[Policy, ...]

    # all_of stops at the first False, any_of at the first True (a class attribute,
    # not a field: no annotation).
    _stop_on = False

    def __call__(self, request: PolicyRequest) -> bool | Awaitable[bool]:
        # Stay synchronous while members are: a composite of sync helpers answers a
        # plain bool; the first awaitable member switches the rest onto the async path.
        for index, member in enumerate(self.policies):
            result = _call_member(member, request)
            if inspect.isawaitable(result):
                return self._finish(request, index, result)
            if _member_answer(member, result) is self._stop_on:
                return self._stop_on
        return not self._stop_on

    async def _finish(self, request: PolicyRequest, index: int, pending: Awaitable[bool]) -> bool:
        member = self.policies[index]
        if _member_answer(member, await _await_member(member, pending)) is self._stop_on:
            return self._stop_on
        for member in self.policies[index + 1 :]:
            result: object = _call_member(member, request)
            if inspect.isawaitable(result):
                result = await _await_member(member, result)
            if _member_answer(member, result) is self._stop_on:
                return self._stop_on
        return not self._stop_on

    def _name(self) -> str:
        kind = "any_of" if self._stop_on else "all_of"
        return f"{kind}({', '.join(policy_name(p) for p in self.policies)})"


class AllOf(_Composite, frozen=True):
    _stop_on = False


class AnyOf(_Composite, frozen=True):
    _stop_on = True


def all_of(*policies: Policy) -> Policy:
    """Allow when every policy allows; stops at the first deny (in the given order)."""
    return AllOf(_members("all_of", policies))


def any_of(*policies: Policy) -> Policy:
    """Allow when at least one policy allows; stops at the first allow (in order)."""
    return AnyOf(_members("any_of", policies))


def _members(kind: str, policies: tuple[Policy, ...]) -> tuple[Policy, ...]:
    if not policies:
        # all_of() of nothing would allow everyone: refuse rather than guess.
        raise ConfigurationError(f"{kind}() needs at least one policy")
    return tuple(ensure_policy(p) for p in policies)


# ----------------------------------------------------------------------------- rules


class Rule(PolicyBase, frozen=True):
    """A plain (sync or async) function used as a policy, with a readable name."""

    fn: Callable[[PolicyRequest], bool | Awaitable[bool]]
    name: str

    def __call__(self, request: PolicyRequest) -> bool | Awaitable[bool]:
        return self.fn(request)

    def _name(self) -> str:
        return self.name


@overload
def rule(
    fn: Callable[[PolicyRequest], bool | Awaitable[bool]], /, *, name: str | None = None
) -> Rule: ...
@overload
def rule(
    *, name: str | None = None
) -> Callable[[Callable[[PolicyRequest], bool | Awaitable[bool]]], Rule]: ...


def rule(
    fn: Callable[[PolicyRequest], bool | Awaitable[bool]] | None = None,
    /,
    *,
    name: str | None = None,
) -> Rule | Callable[[Callable[[PolicyRequest], bool | Awaitable[bool]]], Rule]:
    """Turn a payload-aware function into a named policy.

    ::

        @rule
        def own_orders(req: PolicyRequest) -> bool:
            return req.principal is not None and (
                req.payload.customer_id == req.principal.attrs.get("customer_id")
            )

    ``@rule(name="orders.own")`` overrides the audit name (default: the qualname).
    Plain callables work as policies too; ``rule`` only gives them a stable name.
    """

    def wrap(func: Callable[[PolicyRequest], bool | Awaitable[bool]]) -> Rule:
        if not callable(func):
            raise ConfigurationError("rule() decorates a function taking a PolicyRequest")
        return Rule(func, name or callable_name(func))

    return wrap if fn is None else wrap(fn)


# ------------------------------------------------------------------- names and checks


FACTORIES: frozenset[object] = frozenset(
    {
        require_authenticated,
        require_role,
        require_any_role,
        require_permission,
        require_any_permission,
        allow_signers,
        all_of,
        any_of,
        rule,
    }
)


def ensure_policy(obj: object) -> Policy:
    """Return ``obj`` if it can be a policy; raise :class:`ConfigurationError` otherwise.

    Catches the slip of passing a factory instead of its result
    (``policy=require_authenticated`` instead of ``require_authenticated()``).
    """
    if any(obj is factory for factory in FACTORIES):
        name = getattr(obj, "__name__", "factory")
        raise ConfigurationError(f"{name} builds a policy: call it, e.g. policy={name}(...)")
    if not callable(obj):
        raise ConfigurationError(
            f"a policy must be callable with a PolicyRequest; got {type(obj).__name__}"
        )
    return obj  # callable() narrowed it; the arity is checked by running it


def callable_name(obj: object) -> str:
    if isinstance(obj, functools.partial):
        return f"partial({callable_name(obj.func)})"
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    # A callable object: its class names it. Never its repr, which may show data.
    return type(obj).__qualname__


def policy_name(policy: Policy) -> str:
    """The readable name of a policy, as written in audit lines.

    ``require_permission('orders.refund')``, ``all_of(require_authenticated(), ...)``,
    a rule's name, or a plain function's qualname.
    """
    if isinstance(policy, PolicyBase):
        return repr(policy)
    return callable_name(policy)


def non_bool_reason(result: object) -> str:
    # The type name only: the value itself may be payload data.
    return f"non-bool result ({type(result).__name__})"
