"""Authorization policies: who may enqueue and run a job, decided before it runs.

A policy is any callable taking a :class:`PolicyRequest` and returning ``True`` (allow)
or ``False`` (deny), directly or from an ``await``. Helpers build the common ones and
compose them::

    policy = all_of(require_authenticated(), require_permission("orders.refund"))

:func:`evaluate` runs a policy the way vaultq does, at enqueue and before every attempt:
it fails closed (an exception, a timeout or a non-``bool`` answer denies) and writes
exactly one audit line per decision on the ``vaultq.audit`` logger. Audit lines carry
ids and names only, never payload values, principal attributes or exception messages.

The vocabulary (request, decision, the built-in policies and their names) is defined in
:mod:`vaultq.policies` and re-exported here; this module runs policies and audits them.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable

import anyio

from vaultq.cancellation import cancel_requested, is_cancellation, issued
from vaultq.errors import ConfigurationError
from vaultq.policies import (
    AllOf,
    AllowAll,
    AllowSigners,
    AnyOf,
    Decision,
    DenyAll,
    MemberFailed,
    Policy,
    PolicyRequest,
    RequireAnyPermission,
    RequireAnyRole,
    RequireAuthenticated,
    RequirePermission,
    RequireRole,
    Rule,
    all_of,
    allow_all,
    allow_signers,
    any_of,
    deny_all,
    ensure_policy,
    non_bool_reason,
    policy_name,
    require_any_permission,
    require_any_role,
    require_authenticated,
    require_permission,
    require_role,
    rule,
)

__all__ = [
    "AUDIT_LOGGER",
    "AllOf",
    "AllowAll",
    "AllowSigners",
    "AnyOf",
    "Decision",
    "DenyAll",
    "PendingPolicy",
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
    "finish_evaluation",
    "policy_name",
    "require_any_permission",
    "require_any_role",
    "require_authenticated",
    "require_permission",
    "require_role",
    "rule",
    "safe_id",
    "start_evaluation",
]

AUDIT_LOGGER = "vaultq.audit"
_AUDIT_LOG = logging.getLogger(AUDIT_LOGGER)

# Ids end up in log lines; cap them so a hostile or buggy id cannot flood the audit log.
_MAX_LOGGED_ID = 200


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
    started = start_evaluation(policy, request, timeout=timeout, logger=logger)
    if isinstance(started, PendingPolicy):
        return await finish_evaluation(started)
    return started


class PendingPolicy:
    """An evaluation whose policy answered with an awaitable: :func:`finish_evaluation`
    awaits it (on any event loop: a coroutine is bound to none until it starts)."""

    __slots__ = ("logger", "name", "pending", "request", "started", "timeout")

    def __init__(
        self,
        name: str,
        request: PolicyRequest,
        pending: Awaitable[object],
        started: float,
        timeout: float,
        logger: logging.Logger | None,
    ) -> None:
        self.name = name
        self.request = request
        self.pending = pending
        self.started = started
        self.timeout = timeout
        self.logger = logger


def start_evaluation(
    policy: Policy,
    request: PolicyRequest,
    *,
    timeout: float,
    logger: logging.Logger | None = None,
) -> Decision | PendingPolicy:
    """The synchronous part of :func:`evaluate`, callable without an event loop (a sync
    caller's thread): call ``policy`` and, when it answers at once (every built-in
    policy does), decide and audit; a :class:`PendingPolicy` when it answers with an
    awaitable."""
    if not timeout > 0:  # also rejects NaN
        raise ConfigurationError("policy timeout must be a positive number of seconds")
    name = policy_name(policy)
    # time.monotonic, not anyio.current_time: a sync policy (every built-in one) needs no
    # event-loop clock, and the backend lookup costs ~1 us twice per evaluation.
    started = time.monotonic()
    try:
        result = policy(request)
    except BaseException as exc:
        # A sync call cannot be interrupted, so it runs outside any cancel scope (one
        # costs ~5 us per job, twice per job); only a cancellation issued from outside
        # passes through, as for an awaited one below.
        member, error = _failure(exc, None)
        late = time.monotonic() - started >= timeout
        return _decide(name, request, logger, False, None, error, member, late)
    if inspect.isawaitable(result):
        return PendingPolicy(name, request, result, started, timeout, logger)
    late = time.monotonic() - started >= timeout
    return _decide(name, request, logger, True, result, "", "", late)


async def finish_evaluation(started: PendingPolicy) -> Decision:
    """Await the answer of a :class:`PendingPolicy` within what is left of its timeout;
    decide and audit."""
    member = error = ""
    answered = False
    result: object = None
    remaining = started.timeout - (time.monotonic() - started.started)
    with anyio.CancelScope(deadline=anyio.current_time() + remaining) as scope:
        try:
            result = await started.pending
            answered = True
        except BaseException as exc:
            member, error = _failure(exc, scope)
    late = time.monotonic() - started.started >= started.timeout
    return _decide(
        started.name,
        started.request,
        started.logger,
        answered,
        result,
        error,
        member,
        scope.cancelled_caught or late,
    )


def _decide(
    name: str,
    request: PolicyRequest,
    logger: logging.Logger | None,
    answered: bool,
    result: object,
    error: str,
    member: str,
    timed_out: bool,
) -> Decision:
    allowed = False
    reason = "error"
    if answered:
        if isinstance(result, bool):
            allowed = result
            reason = "allowed" if result else "denied"
        else:
            error = non_bool_reason(result)
    # A policy that swallowed its cancellation, or a sync one that answered late,
    # still missed the deadline (``timed_out``): deny.
    if timed_out:
        allowed, reason, error = False, "timeout", ""
    decision = Decision(allowed, name, reason)
    _audit(logger or _AUDIT_LOG, decision, request, error, member)
    return decision


def _failure(exc: BaseException, scope: anyio.CancelScope | None) -> tuple[str, str]:
    """(member, error) for a policy that raised; re-raises a cancellation that was
    issued (``scope``'s deadline, a shutdown). SystemExit or a custom BaseException from
    policy code denies too (fail closed); a CancelledError the policy raised itself
    (awaiting a cancelled future) denies like any error."""
    if isinstance(exc, MemberFailed):
        return exc.member, exc.error
    if not isinstance(exc, Exception):
        if scope is not None and issued(exc, scope):
            raise exc
        # cancel_requested() first: it is False outside an event loop (a sync caller),
        # where is_cancellation() could not ask anyio which exception cancels.
        if scope is None and cancel_requested() and is_cancellation(exc):
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
        "job_id": safe_id(request.job_id),
        "task": safe_id(request.task),
        "principal": safe_id(principal.id) if principal is not None else "-",
        "signer_id": safe_id(request.signer_id) or "-",
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
