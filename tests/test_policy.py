"""Policies: helpers, composites, fail-closed evaluation and audit lines (no broker)."""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from vaultq.errors import ConfigurationError
from vaultq.policy import (
    AUDIT_LOGGER,
    Decision,
    Policy,
    PolicyRequest,
    all_of,
    allow_all,
    allow_signers,
    any_of,
    deny_all,
    ensure_policy,
    evaluate,
    policy_name,
    require_any_permission,
    require_any_role,
    require_authenticated,
    require_permission,
    require_role,
    rule,
)
from vaultq.principal import Principal

pytestmark = pytest.mark.anyio

SECRET_MARKER = "PAYLOAD-MARKER-7f3a"
ATTR_MARKER = "ATTR-MARKER-c0ffee"
EXC_MARKER = "EXCEPTION-MESSAGE-d34d"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    customer_id: int
    note: str = SECRET_MARKER


ALICE = Principal(
    "user:alice",
    roles=frozenset({"staff", "support"}),
    permissions=frozenset({"orders.refund", "orders.read"}),
    attrs={"customer_id": 7, "email": ATTR_MARKER},
)


def make_request(
    principal: Principal | None = ALICE,
    *,
    payload: Any = None,
    signer_id: str = "web-1",
    job_id: str = "job-0001",
    task: str = "shop.refund",
    attempt: int = 1,
    stage: str = "run",
) -> PolicyRequest:
    return PolicyRequest(
        principal=principal,
        payload=Refund(order_id=1, customer_id=7) if payload is None else payload,
        task=task,
        signer_id=signer_id,
        attempt=attempt,
        job_id=job_id,
        stage=stage,  # type: ignore[arg-type]
    )


async def decide(
    policy: Policy, request: PolicyRequest | None = None, timeout: float = 5.0
) -> Decision:
    return await evaluate(policy, request or make_request(), timeout=timeout)


# ------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("policy", "principal", "allowed"),
    [
        (allow_all, None, True),
        (deny_all, ALICE, False),
        (require_authenticated(), ALICE, True),
        (require_authenticated(), None, False),
        (require_authenticated(), Principal.anonymous(), False),
        (require_authenticated(), Principal(""), False),
        (require_role("staff"), ALICE, True),
        (require_role("staff", "support"), ALICE, True),
        (require_role("staff", "admin"), ALICE, False),
        (require_role("staff"), None, False),
        (require_any_role("admin", "support"), ALICE, True),
        (require_any_role("admin", "root"), ALICE, False),
        (require_any_role("staff"), None, False),
        (require_permission("orders.refund"), ALICE, True),
        (require_permission("orders.refund", "orders.read"), ALICE, True),
        (require_permission("orders.refund", "orders.delete"), ALICE, False),
        (require_permission("orders.refund"), None, False),
        (require_permission("orders.refund"), Principal.anonymous(), False),
        (require_any_permission("orders.delete", "orders.read"), ALICE, True),
        (require_any_permission("orders.delete"), ALICE, False),
        (require_any_permission("orders.read"), None, False),
    ],
    ids=lambda v: repr(v) if not isinstance(v, bool) else str(v),
)
async def test_principal_helpers(
    policy: Policy, principal: Principal | None, allowed: bool
) -> None:
    decision = await decide(policy, make_request(principal))
    assert decision.allowed is allowed
    assert decision.reason == ("allowed" if allowed else "denied")
    assert decision.policy == policy_name(policy)
    # Helpers are plain sync callables too.
    assert policy(make_request(principal)) is allowed


@pytest.mark.parametrize(
    ("signer", "allowed"), [("web-1", True), ("batch", True), ("evil", False), ("", False)]
)
async def test_allow_signers(signer: str, allowed: bool) -> None:
    decision = await decide(allow_signers("web-1", "batch"), make_request(signer_id=signer))
    assert decision.allowed is allowed


@pytest.mark.parametrize(
    "factory",
    [require_role, require_any_role, require_permission, require_any_permission, allow_signers],
)
def test_name_helpers_refuse_bad_arguments(factory: Any) -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        factory()
    with pytest.raises(ConfigurationError, match="separate arguments"):
        factory(["a", "b"])
    with pytest.raises(ConfigurationError):
        factory("")


def test_helpers_are_immutable_values() -> None:
    policy = require_permission("orders.refund")
    with pytest.raises(AttributeError):
        policy.permissions = ("everything",)  # type: ignore[attr-defined]
    assert policy == require_permission("orders.refund")
    assert hash(policy) == hash(require_permission("orders.refund"))
    assert require_role("a", "a", "b") == require_role("a", "b")


# --------------------------------------------------------------------- composites


async def async_true(req: PolicyRequest) -> bool:
    await anyio.sleep(0)
    return True


async def async_false(req: PolicyRequest) -> bool:
    await anyio.sleep(0)
    return False


def sync_true(req: PolicyRequest) -> bool:
    return True


def sync_false(req: PolicyRequest) -> bool:
    return False


@pytest.mark.parametrize(
    ("members", "all_allowed", "any_allowed"),
    [
        ((sync_true, sync_true), True, True),
        ((sync_true, sync_false), False, True),
        ((sync_false, sync_false), False, False),
        ((async_true, async_true), True, True),
        ((async_true, async_false), False, True),
        ((async_false, async_false), False, False),
        ((sync_true, async_true, sync_true), True, True),
        ((sync_true, async_false, sync_true), False, True),
        ((async_true, sync_false), False, True),
        ((sync_false, async_false, sync_false), False, False),
    ],
)
async def test_composites_mixing_sync_and_async(
    members: tuple[Policy, ...], all_allowed: bool, any_allowed: bool
) -> None:
    assert (await decide(all_of(*members))).allowed is all_allowed
    assert (await decide(any_of(*members))).allowed is any_allowed


def test_sync_composite_answers_a_plain_bool() -> None:
    policy = all_of(require_authenticated(), any_of(require_role("admin"), allow_signers("web-1")))
    assert policy(make_request()) is True
    assert policy(make_request(signer_id="other")) is False


async def test_composites_short_circuit() -> None:
    calls: list[str] = []

    def spy(name: str, answer: bool) -> Policy:
        def policy(req: PolicyRequest) -> bool:
            calls.append(name)
            return answer

        return policy

    async def aspy(req: PolicyRequest) -> bool:
        calls.append("async")
        await anyio.sleep(0)
        return False

    assert not (await decide(all_of(spy("a", True), aspy, spy("b", True)))).allowed
    assert calls == ["a", "async"]
    calls.clear()
    assert (await decide(any_of(spy("a", False), spy("b", True), spy("c", True)))).allowed
    assert calls == ["a", "b"]
    calls.clear()
    # A later member that would raise is never reached.
    assert not (await decide(all_of(deny_all, boom_sync))).allowed
    assert (await decide(any_of(allow_all, boom_async))).allowed


def test_composites_refuse_bad_members() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        all_of()
    with pytest.raises(ConfigurationError, match="at least one"):
        any_of()
    with pytest.raises(ConfigurationError, match="call it"):
        all_of(require_authenticated)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="callable"):
        any_of("orders.refund")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="callable"):
        ensure_policy([])


# ------------------------------------------------------------------------- rules


@rule
def own_orders(req: PolicyRequest) -> bool:
    return req.principal is not None and (
        req.payload.customer_id == req.principal.attrs.get("customer_id")
    )


@rule(name="orders.open_hours")
async def open_hours(req: PolicyRequest) -> bool:
    await anyio.sleep(0)
    return bool(req.payload.order_id < 100)


async def test_rules_see_the_payload() -> None:
    assert (await decide(own_orders)).allowed
    other = make_request(payload=Refund(order_id=1, customer_id=8))
    assert not (await decide(own_orders, other)).allowed
    assert not (await decide(own_orders, make_request(None))).allowed
    assert (await decide(open_hours)).allowed
    assert not (await decide(open_hours, make_request(payload=Refund(500, 7)))).allowed
    assert (await decide(all_of(require_permission("orders.refund"), own_orders))).allowed


async def test_plain_callables_are_policies() -> None:
    decision = await decide(lambda req: req.task == "shop.refund")
    assert decision.allowed
    assert decision.policy.endswith("<lambda>")


# ------------------------------------------------------------------- fail closed


def boom_sync(req: PolicyRequest) -> bool:
    raise ValueError(EXC_MARKER)


async def boom_async(req: PolicyRequest) -> bool:
    await anyio.sleep(0)
    raise KeyError(EXC_MARKER)


async def hang(req: PolicyRequest) -> bool:
    await anyio.sleep(10)
    return True


@pytest.mark.parametrize(
    "policy",
    [
        boom_sync,
        boom_async,
        all_of(allow_all, boom_sync),
        all_of(async_true, boom_async),
        any_of(sync_false, boom_async),
        any_of(async_false, all_of(allow_all, boom_sync)),
    ],
    ids=policy_name,
)
async def test_raising_policy_denies_with_error(policy: Policy) -> None:
    decision = await decide(policy)
    assert decision == Decision(False, policy_name(policy), "error")


@pytest.mark.parametrize("answer", [None, "yes", 1, [True], "false"])
async def test_non_bool_answer_denies(answer: object) -> None:
    def sync_answer(req: PolicyRequest) -> Any:
        return answer

    async def async_answer(req: PolicyRequest) -> Any:
        return answer

    for policy in (sync_answer, async_answer, all_of(allow_all, async_answer), any_of(sync_answer)):
        decision = await decide(policy)
        assert not decision.allowed
        assert decision.reason == "error"


@pytest.mark.parametrize(
    "policy", [hang, all_of(allow_all, hang), any_of(async_false, hang)], ids=policy_name
)
async def test_hanging_policy_denies_with_timeout_quickly(policy: Policy) -> None:
    started = time.monotonic()
    decision = await decide(policy, timeout=0.2)
    elapsed = time.monotonic() - started
    assert decision == Decision(False, policy_name(policy), "timeout")
    assert 0.15 <= elapsed < 1.5


async def test_policy_swallowing_cancellation_still_times_out() -> None:
    async def stubborn(req: PolicyRequest) -> bool:
        try:
            await anyio.sleep(10)
        except BaseException:
            return True  # a buggy policy must not turn its deadline into an allow
        return True

    decision = await decide(stubborn, timeout=0.1)
    assert decision.reason == "timeout"
    assert not decision.allowed


async def test_slow_sync_policy_answering_late_denies() -> None:
    def slow(req: PolicyRequest) -> bool:
        time.sleep(0.15)  # blocks: sync policies cannot be interrupted
        return True

    decision = await decide(slow, timeout=0.05)
    assert decision.reason == "timeout"


async def test_policys_own_timeout_error_is_an_error_not_a_timeout() -> None:
    def db_timeout(req: PolicyRequest) -> bool:
        raise TimeoutError("db")

    assert (await decide(db_timeout)).reason == "error"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, "cancelled"])
async def test_a_base_exception_from_policy_code_denies(kind: str, raised: Any) -> None:
    # Sync policies run outside a cancel scope (evaluate's fast path), async ones inside
    # one: either way a BaseException the policy raises itself, a CancelledError
    # included, denies (fail closed) and does not escape into the worker.
    exc_class = anyio.get_cancelled_exc_class() if raised == "cancelled" else raised

    def sync(req: PolicyRequest) -> bool:
        raise exc_class()

    async def async_(req: PolicyRequest) -> bool:
        raise exc_class()

    decision = await decide(sync if kind == "sync" else async_)
    assert (decision.allowed, decision.reason) == (False, "error")


async def test_a_cancellation_from_outside_passes_through_a_sync_policy() -> None:
    # The worker being torn down while a sync policy runs: not a denial, a cancellation.
    seen: list[str] = []

    def cancelling(req: PolicyRequest) -> bool:
        scope.cancel()  # a cancel of the task around us, issued while the policy runs
        seen.append("ran")
        return True

    with anyio.CancelScope() as scope:
        await decide(cancelling)
        await anyio.sleep(0)  # the cancellation lands at the next checkpoint
        seen.append("not reached")
    assert seen == ["ran"]
    assert scope.cancelled_caught


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
async def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ConfigurationError):
        await decide(allow_all, timeout=timeout)


async def test_outer_cancellation_propagates_without_audit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    with anyio.move_on_after(0.1) as scope:
        await decide(hang, timeout=5)
    assert scope.cancelled_caught
    assert audit_records(caplog) == []


# ---------------------------------------------------------------------- auditing


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT_LOGGER]


@pytest.mark.parametrize(
    ("policy", "allowed", "level", "reason"),
    [
        (require_permission("orders.refund"), True, logging.DEBUG, "allowed"),
        (require_role("admin"), False, logging.WARNING, "denied"),
        (own_orders, True, logging.DEBUG, "allowed"),
        (boom_sync, False, logging.WARNING, "error"),
        (boom_async, False, logging.WARNING, "error"),
        (all_of(require_authenticated(), boom_async), False, logging.WARNING, "error"),
        (hang, False, logging.WARNING, "timeout"),
    ],
    ids=lambda v: policy_name(v) if callable(v) else str(v),
)
async def test_one_audit_line_per_decision(
    caplog: pytest.LogCaptureFixture, policy: Policy, allowed: bool, level: int, reason: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=AUDIT_LOGGER)
    request = make_request(job_id="job-abc123", task="shop.refund", attempt=2)
    decision = await evaluate(policy, request, timeout=0.2)
    assert decision.allowed is allowed
    records = audit_records(caplog)
    assert len(records) == 1
    record = records[0]
    line = record.getMessage()
    assert record.levelno == level
    for expected in ("job-abc123", "shop.refund", "user:alice", "web-1", policy_name(policy)):
        assert expected in line
    assert ("allow" if allowed else "deny") in line
    assert f"reason={reason}" in line
    fields = record.vaultq  # type: ignore[attr-defined]
    assert fields["job_id"] == "job-abc123"
    assert fields["task"] == "shop.refund"
    assert fields["principal"] == "user:alice"
    assert fields["signer_id"] == "web-1"
    assert fields["decision"] == ("allow" if allowed else "deny")
    assert fields["policy"] == policy_name(policy)
    assert fields["reason"] == reason
    assert fields["attempt"] == 2
    assert fields["stage"] == "run"
    # Never payload values, principal attributes or exception messages; no traceback.
    everything = line + repr(fields) + caplog.text
    for secret in (SECRET_MARKER, ATTR_MARKER, EXC_MARKER, "customer_id", "orders.read"):
        assert secret not in everything
    assert record.exc_info is None


async def test_allow_lines_are_debug_and_denials_stay_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # At the usual INFO level an allowed job writes no audit line (issue 10: 20 MB of
    # "allow" lines per 100,000 jobs); a denial still does.
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    request = make_request(job_id="job-quiet", task="shop.refund", attempt=1)
    assert (await evaluate(require_permission("orders.refund"), request, timeout=1)).allowed
    assert audit_records(caplog) == []
    assert not (await evaluate(require_role("admin"), request, timeout=1)).allowed
    (record,) = audit_records(caplog)
    assert record.levelno == logging.WARNING and "deny" in record.getMessage()


async def test_audit_names_the_error_class_and_failing_member(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    policy = any_of(deny_all, all_of(allow_all, boom_sync))
    await decide(policy)
    (record,) = audit_records(caplog)
    assert record.vaultq["error"] == "ValueError"  # type: ignore[attr-defined]
    assert record.vaultq["member"] == "boom_sync"  # type: ignore[attr-defined]
    assert record.vaultq["policy"] == policy_name(policy)  # type: ignore[attr-defined]
    assert EXC_MARKER not in caplog.text

    caplog.clear()

    async def returns_payload(req: PolicyRequest) -> Any:
        return req.payload.note

    await decide(returns_payload)
    (record,) = audit_records(caplog)
    assert record.vaultq["error"] == "non-bool result (str)"  # type: ignore[attr-defined]
    assert SECRET_MARKER not in caplog.text


async def test_audit_without_principal_and_at_enqueue(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    request = make_request(None, signer_id="", attempt=0, stage="enqueue")
    await evaluate(require_authenticated(), request, timeout=1)
    (record,) = audit_records(caplog)
    assert record.vaultq["principal"] == "-"  # type: ignore[attr-defined]
    assert record.vaultq["signer_id"] == "-"  # type: ignore[attr-defined]
    assert record.vaultq["stage"] == "enqueue"  # type: ignore[attr-defined]
    assert record.vaultq["attempt"] == 0  # type: ignore[attr-defined]
    assert "principal=- " in record.getMessage()


async def test_audit_ids_cannot_forge_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=AUDIT_LOGGER)
    forged = Principal("mallory\nauthorization allow: job=x principal=admin")
    await decide(allow_all, make_request(forged))
    (record,) = audit_records(caplog)
    assert "\n" not in record.getMessage()
    assert "mallory\\n" in record.getMessage()


async def test_custom_logger_and_disabled_logging(caplog: pytest.LogCaptureFixture) -> None:
    custom = logging.getLogger("tests.policy.audit")
    caplog.set_level(logging.DEBUG, logger="tests.policy.audit")
    await evaluate(allow_all, make_request(), timeout=1, logger=custom)
    assert [r.name for r in caplog.records] == ["tests.policy.audit"]
    caplog.clear()
    caplog.set_level(logging.ERROR, logger=AUDIT_LOGGER)
    assert (await decide(deny_all)).reason == "denied"  # decisions do not depend on logging
    assert audit_records(caplog) == []


# -------------------------------------------------------------------------- names


class CallableObject:
    def __init__(self) -> None:
        self.data = SECRET_MARKER

    def __call__(self, req: PolicyRequest) -> bool:
        return True

    def __repr__(self) -> str:
        return f"CallableObject({self.data})"

    def method(self, req: PolicyRequest) -> bool:
        return True


def test_policy_names() -> None:
    assert policy_name(allow_all) == "allow_all"
    assert policy_name(deny_all) == "deny_all"
    assert policy_name(require_authenticated()) == "require_authenticated()"
    assert policy_name(require_permission("orders.refund")) == "require_permission('orders.refund')"
    assert policy_name(require_role("a", "b")) == "require_role('a', 'b')"
    assert policy_name(require_any_role("a")) == "require_any_role('a')"
    assert policy_name(require_any_permission("p")) == "require_any_permission('p')"
    assert policy_name(allow_signers("web-1")) == "allow_signers('web-1')"
    assert (
        policy_name(all_of(require_authenticated(), any_of(require_role("admin"), own_orders)))
        == "all_of(require_authenticated(), any_of(require_role('admin'), own_orders))"
    )
    assert policy_name(own_orders) == "own_orders"
    assert policy_name(open_hours) == "orders.open_hours"
    assert policy_name(sync_true) == "sync_true"
    assert policy_name(CallableObject()) == "CallableObject"  # never the object's repr
    assert policy_name(CallableObject().method) == "CallableObject.method"
    assert policy_name(functools.partial(sync_true)) == "partial(sync_true)"
    # The repr of a helper is its name.
    assert repr(require_permission("x")) == "require_permission('x')"
    assert str(any_of(allow_all, deny_all)) == "any_of(allow_all, deny_all)"


# --------------------------------------------------------------------------- docs


DOC = Path(__file__).resolve().parent.parent / "docs" / "authorization.md"


def test_doc_examples_run() -> None:
    """Blocks marked ``<!-- test: policy -->`` in docs/authorization.md run as written."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- test: policy -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {"__name__": "docs_authorization"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
