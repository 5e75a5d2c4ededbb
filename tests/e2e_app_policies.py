"""Test app for the authorization end-to-end tests: ``vaultq worker e2e_app_policies:app``.

The worker process configures it only through the environment, as a deployment would:

- ``VAULTQ_BROKER`` / ``VAULTQ_KEYS``: read by :class:`vaultq.App` itself;
- ``E2E_APP``: the app name (each test uses its own, so broker keys never collide);
- ``E2E_STATE``: a directory for side-effect counters (one line per call) and the
  ``revoked`` flag the "still authorized?" policy reads (the test flips it);
- ``E2E_POLICY_TIMEOUT``: the app's policy timeout in seconds;
- ``E2E_ALLOWED_SIGNER``: the only signer id the ``signed_by_ops`` task accepts.

Tests build the producer side with :func:`build` (same tasks and policies, explicit
broker and keyring).
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec

import vaultq


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    note: str = ""
    revoke_and_fail: bool = False
    """Attempt 1 revokes the principal's rights, then raises (so a retry follows)."""


def count(state: Path, counter: str) -> int:
    """How many times a task function ran."""
    path = state / counter
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def build(
    name: str,
    state: Path,
    *,
    policy_timeout: float = 0.5,
    allowed_signer: str = "no-signer-configured",
    broker: str | None = None,
    keyring: vaultq.Keyring | None = None,
    signer_policy: vaultq.Policy | None = None,
) -> vaultq.App:
    app = vaultq.App(
        name, broker=broker, keyring=keyring, policy_timeout=policy_timeout, backoff=0.05
    )

    def bump(counter: str) -> None:
        with (state / counter).open("a", encoding="utf-8") as fh:
            fh.write("called\n")

    @vaultq.rule(name="still_authorized")
    def still_authorized(request: vaultq.PolicyRequest) -> bool:
        # Stands in for "is this user still an AuthorizedUser?" in a database.
        return not (state / "revoked").exists()

    @vaultq.rule(name="raises_in_worker")
    async def raises_in_worker(request: vaultq.PolicyRequest) -> bool:
        await anyio.sleep(0)
        if request.stage == "run":
            # The message quotes the payload: the audit line must keep only the class.
            raise RuntimeError(f"policy backend down for {request.payload}")
        return True

    @vaultq.rule(name="hangs_in_worker")
    async def hangs_in_worker(request: vaultq.PolicyRequest) -> bool:
        if request.stage == "run":
            await anyio.sleep(3600)
        return True

    @app.task(
        name="refund",
        retries=3,
        policy=vaultq.all_of(vaultq.require_permission("orders.refund"), still_authorized),
    )
    async def refund(job: Refund) -> int:
        bump("refund")
        if job.revoke_and_fail:
            (state / "revoked").touch()
            raise RuntimeError("first attempt fails after the rights were revoked")
        return job.order_id

    @app.task(name="policy_raises", retries=3, policy=raises_in_worker)
    async def policy_raises(job: Refund) -> int:
        bump("policy_raises")
        return job.order_id

    @app.task(name="policy_hangs", retries=3, policy=hangs_in_worker)
    async def policy_hangs(job: Refund) -> int:
        bump("policy_hangs")
        return job.order_id

    @app.task(
        name="signed_by_ops",
        retries=3,
        policy=signer_policy or vaultq.allow_signers(allowed_signer),
    )
    async def signed_by_ops(job: Refund) -> int:
        bump("signed_by_ops")
        return job.order_id

    @app.task(name="admin_only", retries=3, policy=vaultq.require_role("admin"))
    async def admin_only(job: Refund) -> int:
        bump("admin_only")
        return job.order_id

    return app


def __getattr__(attr: str) -> vaultq.App:
    # Built on first access (by `vaultq worker e2e_app_policies:app`), so importing this
    # module for build() does not create an app from the test process's environment.
    if attr != "app":
        raise AttributeError(attr)
    app = build(
        os.environ["E2E_APP"],
        Path(os.environ["E2E_STATE"]),
        policy_timeout=float(os.environ.get("E2E_POLICY_TIMEOUT", "0.5")),
        allowed_signer=os.environ.get("E2E_ALLOWED_SIGNER", "no-signer-configured"),
    )
    globals()["app"] = app
    return app
