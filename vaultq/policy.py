"""Authorization policies: who may enqueue and run a job, decided before it runs.

A policy is any callable taking a :class:`PolicyRequest` and returning ``True`` (allow)
or ``False`` (deny), directly or from an ``await``. Helpers build the common ones and
compose them::

    policy = all_of(require_authenticated(), require_permission("orders.refund"))

:func:`evaluate` runs a policy the way vaultq does, at enqueue and before every attempt:
it fails closed (an exception, a timeout or a non-``bool`` answer denies) and writes
exactly one audit line per decision on the ``vaultq.audit`` logger. Audit lines carry
ids and names only, never payload values, principal attributes or exception messages.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, overload

import anyio
import msgspec

from vaultq.cancellation import cancel_requested, is_cancellation, issued
from vaultq.errors import ConfigurationError
from vaultq.principal import Principal

__all__ = [
    "AUDIT_LOGGER",
    "AllOf",
    "AllowAll",
    "AllowSigners",
    "AnyOf",
    "Decision",
    "DenyAll",
    "Policy",
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
    "deny_all",
    "ensure_policy",
    "evaluate",
    "policy_name",
    "require_any_permission",
    "require_any_role",
    "require_authenticated",
    "require_permission",
    "require_role",
    "rule",
    "safe_id",
]

AUDIT_LOGGER = "vaultq.audit"

# Ids end up in log lines; cap them so a hostile or buggy id cannot flood the audit log.
_MAX_LOGGED_ID = 200


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


class _MemberFailed(Exception):
    """A member of a composite raised or answered a non-bool.

    Carries only safe names: the member's policy name and the error's class name. The
    original exception stays chained as ``__cause__`` and is never logged.
    """

    def __init__(self, member: str, error: str) -> None:
        super().__init__(member, error)
        self.member = member
        self.error = error


# --------------------------------------------------------------------------- helpers


class _PolicyBase(msgspec.Struct, frozen=True):
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


class AllowAll(_PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        return True

    def _name(self) -> str:
        return "allow_all"


class DenyAll(_PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        return False

    def _name(self) -> str:
        return "deny_all"


allow_all: Policy = AllowAll()
"""Allows every request. Audited like any other policy."""
deny_all: Policy = DenyAll()
"""Denies every request (a task that must never run from the queue)."""


class RequireAuthenticated(_PolicyBase, frozen=True):
    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and bool(principal.id) and not principal.is_anonymous

    def _name(self) -> str:
        return "require_authenticated()"


class RequireRole(_PolicyBase, frozen=True):
    roles: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and all(r in principal.roles for r in self.roles)

    def _name(self) -> str:
        return f"require_role({_args(self.roles)})"


class RequireAnyRole(_PolicyBase, frozen=True):
    roles: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and not principal.roles.isdisjoint(self.roles)

    def _name(self) -> str:
        return f"require_any_role({_args(self.roles)})"


class RequirePermission(_PolicyBase, frozen=True):
    permissions: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and all(p in principal.permissions for p in self.permissions)

    def _name(self) -> str:
        return f"require_permission({_args(self.permissions)})"


class RequireAnyPermission(_PolicyBase, frozen=True):
    permissions: tuple[str, ...]

    def __call__(self, request: PolicyRequest) -> bool:
        principal = request.principal
        return principal is not None and not principal.permissions.isdisjoint(self.permissions)

    def _name(self) -> str:
        return f"require_any_permission({_args(self.permissions)})"


class AllowSigners(_PolicyBase, frozen=True):
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
    except _MemberFailed:
        raise  # a nested composite already named the innermost failing member
    except Exception as exc:
        raise _MemberFailed(policy_name(member), type(exc).__name__) from exc


async def _await_member(member: Policy, pending: Awaitable[bool]) -> object:
    try:
        return await pending
    except _MemberFailed:
        raise
    except Exception as exc:
        raise _MemberFailed(policy_name(member), type(exc).__name__) from exc


def _member_answer(member: Policy, result: object) -> bool:
    # Never truthiness: a policy answering None or "no" is a bug and must deny.
    if isinstance(result, bool):
        return result
    raise _MemberFailed(policy_name(member), _non_bool(result))


class _Composite(_PolicyBase, frozen=True):
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


class Rule(_PolicyBase, frozen=True):
    """A plain (sync or async) function used as a policy, with a readable name."""

    fn: Callable[[PolicyRequest], bool | Awaitable[bool]]
    name: str

    def __call__(self, request: PolicyRequest) -> bool | Awaitable[bool]:
        return self.fn(request)

    def _name(self) -> str:
        return self.name


@overload
def rule(fn: Callable[[PolicyRequest], bool | Awaitable[bool]], /) -> Rule: ...
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
        return Rule(func, name or _callable_name(func))

    return wrap if fn is None else wrap(fn)


# ------------------------------------------------------------------- names and checks


_FACTORIES: frozenset[object] = frozenset(
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
    if any(obj is factory for factory in _FACTORIES):
        name = getattr(obj, "__name__", "factory")
        raise ConfigurationError(f"{name} builds a policy: call it, e.g. policy={name}(...)")
    if not callable(obj):
        raise ConfigurationError(
            f"a policy must be callable with a PolicyRequest; got {type(obj).__name__}"
        )
    return obj  # callable() narrowed it; the arity is checked by running it


def _callable_name(obj: object) -> str:
    if isinstance(obj, functools.partial):
        return f"partial({_callable_name(obj.func)})"
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
    if isinstance(policy, _PolicyBase):
        return repr(policy)
    return _callable_name(policy)


def _non_bool(result: object) -> str:
    # The type name only: the value itself may be payload data.
    return f"non-bool result ({type(result).__name__})"


# ------------------------------------------------------------------------ evaluation


async def evaluate(
    policy: Policy,
    request: PolicyRequest,
    *,
    timeout: float,
    logger: logging.Logger | None = None,
) -> Decision:
    """Run ``policy`` on ``request``, fail closed, and audit the decision.

    - An exception denies with reason ``"error"``; a non-``bool`` answer (``None``,
      ``"yes"``, ``1``) denies with ``"error"`` (never truthiness).
    - No answer within ``timeout`` seconds denies with ``"timeout"``: async policies are
      cancelled at their next ``await``; a sync policy cannot be interrupted (keep them
      quick; do lookups in async policies), but a late answer still denies.
    - Exactly one line goes to ``logger`` (default: the ``vaultq.audit`` logger), DEBUG
      when allowed, WARNING when denied, with structured fields in
      ``record.vaultq``. Exceptions are reduced to their class name.

    Cancellation from outside (worker shutdown) propagates and is not audited.

    Raises:
        ConfigurationError: ``timeout`` is not a positive number.
    """
    if not timeout > 0:  # also rejects NaN
        raise ConfigurationError("policy timeout must be a positive number of seconds")
    name = policy_name(policy)
    allowed = False
    reason = "error"
    error = ""
    member = ""
    deadline = anyio.current_time() + timeout
    scope: anyio.CancelScope | None = None
    result: object = None
    failed = True
    try:
        result = policy(request)
        failed = False
    except BaseException as exc:
        # A sync call cannot be interrupted, so it runs outside any cancel scope (one
        # costs ~5 us per job, twice per job); only a cancellation issued from outside
        # passes through, as for an awaited one below.
        member, error = _failure(exc, None)
    if not failed and inspect.isawaitable(result):
        pending = result
        failed = True  # until it answers (a swallowed timeout leaves it so)
        with anyio.CancelScope(deadline=deadline) as scope:
            try:
                result = await pending
                failed = False
            except BaseException as exc:
                member, error = _failure(exc, scope)
    if not failed:
        if isinstance(result, bool):
            allowed = result
            reason = "allowed" if result else "denied"
        else:
            error = _non_bool(result)
    # A policy that swallowed its cancellation, or a sync one that answered late,
    # still missed the deadline: deny.
    if (scope is not None and scope.cancelled_caught) or anyio.current_time() >= deadline:
        allowed, reason, error = False, "timeout", ""
    decision = Decision(allowed, name, reason)
    _audit(logger or logging.getLogger(AUDIT_LOGGER), decision, request, error, member)
    return decision


def _failure(exc: BaseException, scope: anyio.CancelScope | None) -> tuple[str, str]:
    """(member, error) for a policy that raised; re-raises a cancellation that was
    issued (``scope``'s deadline, a shutdown). SystemExit or a custom BaseException from
    policy code denies too (fail closed); a CancelledError the policy raised itself
    (awaiting a cancelled future) denies like any error."""
    if isinstance(exc, _MemberFailed):
        return exc.member, exc.error
    if not isinstance(exc, Exception):
        if scope is not None and issued(exc, scope):
            raise exc
        if scope is None and is_cancellation(exc) and cancel_requested():
            raise exc
    # The message may quote payload values: keep only the class name.
    return "", type(exc).__name__


def safe_id(value: str) -> str:
    """``value`` fit for a log line or an error message: control and other unprintable
    characters escaped (``\\n``, ``\\x1b``), length bounded.

    Ids come from envelopes, brokers and callers; unescaped, one id could forge extra
    audit lines or drive the terminal of whoever reads the message."""
    if len(value) > _MAX_LOGGED_ID:
        value = value[:_MAX_LOGGED_ID] + "..."
    if value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


_safe_id = safe_id  # the older private name, still imported by the CLI and the executor


def _audit(
    logger: logging.Logger,
    decision: Decision,
    request: PolicyRequest,
    error: str,
    member: str,
) -> None:
    # Allows are the common case (one per enqueue and per attempt): DEBUG keeps them out of
    # production logs by default; denials are what an operator must see.
    level = logging.DEBUG if decision.allowed else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    principal = request.principal
    fields: dict[str, object] = {
        "event": "authorization",
        "decision": "allow" if decision.allowed else "deny",
        "policy": decision.policy,
        "reason": decision.reason,
        "job_id": _safe_id(request.job_id),
        "task": _safe_id(request.task),
        "principal": _safe_id(principal.id) if principal is not None else "-",
        "signer_id": _safe_id(request.signer_id) or "-",
        "attempt": request.attempt,
        "stage": request.stage,
    }
    if error:
        fields["error"] = error
    if member:
        fields["member"] = member
    msg = (
        "authorization %s: job=%s task=%s stage=%s attempt=%d principal=%s signer=%s "
        "policy=%s reason=%s"
    )
    args: tuple[object, ...] = (
        fields["decision"],
        fields["job_id"],
        fields["task"],
        fields["stage"],
        request.attempt,
        fields["principal"],
        fields["signer_id"],
        decision.policy,
        decision.reason,
    )
    if error:
        msg += " error=%s"
        args += (error,)
    if member:
        msg += " member=%s"
        args += (member,)
    logger.log(level, msg, *args, extra={"vaultq": fields})
