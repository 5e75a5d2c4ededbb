"""``vaultq check [--deploy]``: find configuration that is unsafe before it is deployed."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from vaultq.app import App
from vaultq.clock import describe_offset
from vaultq.deps import dependency_report
from vaultq.envelope import peek_header
from vaultq.errors import EnvelopeError, VaultqError
from vaultq.files import untrusted_reason
from vaultq.policy import AllowAll
from vaultq.settings import UNSET, environment
from vaultq.tasks import TaskOverrides

__all__ = [
    "Finding",
    "check_app",
    "clock_findings",
    "dependency_findings",
    "has_revoked_keys",
    "inherited_retries",
    "plaintext_off_host",
    "revoked_backlog",
]

Level = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper()} {self.code}: {self.message}"


def check_app(app: App, *, deploy: bool = False) -> list[Finding]:
    """Findings for ``app``. With ``deploy``, also what is fine on a laptop but not in
    production (plaintext Redis off this host, tasks relying on the default policy)."""
    found: list[Finding] = []
    found += _keys(app)
    found += _broker(app, deploy)
    if deploy:
        found += _policies(app)
    if not app.tasks:
        found.append(Finding("warning", "VQ301", "the app has no tasks registered"))
    found += inherited_retries(app)
    found += dependency_findings()
    return found


def inherited_retries(app: App) -> list[Finding]:
    """VQ302: tasks that retry only because ``App(retries=N)`` says so.

    A retry repeats the side effects of the failed attempt, so whether a task retries is
    its author's call. ``App(retries=3)`` is the usual mistranslation of Celery's
    ``max_retries=3`` (a cap for ``self.retry``, not a default retry): it silently retries
    every task that did not choose, idempotent or not."""
    n = app.settings.retries
    if n <= 0:
        return []
    names = sorted(
        name
        for name, task in app.tasks.items()
        if isinstance(task.overrides, TaskOverrides) and task.overrides.retries is UNSET
    )
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [
        Finding(
            "warning",
            "VQ302",
            f"{len(names)} task(s) retry {n} time(s) only because of App(retries={n}): {shown}. "
            "A retry repeats the failed attempt's side effects: give each idempotent task "
            "its own @app.task(retries=...) and leave the App default at 0",
        )
    ]


def dependency_findings() -> list[Finding]:
    """VQ501 for each installed dependency older than the safe minimum in vaultq.deps."""
    return [
        Finding(
            "warning",
            "VQ501",
            f"{row.package} {row.installed} is older than {row.minimum}, the safe minimum "
            f"vaultq declares ({row.reason}): upgrade it",
        )
        for row in dependency_report()
        if not row.ok and row.installed is not None
    ]


def _keys(app: App) -> list[Finding]:
    out: list[Finding] = []
    env = environment().keys or ""
    if env.startswith("@"):
        path = Path(env[1:])
        try:
            st = path.stat()
        except OSError:
            return [Finding("error", "VQ101", f"VAULTQ_KEYS names {path}, which cannot be read")]
        # The loader's own rule (owner, mode, directories above): docs/keys.md.
        problem = untrusted_reason(path, st)
        if problem is not None:
            out.append(Finding("error", "VQ102", problem))
    try:
        keyring = app.keyring
    except VaultqError as exc:
        return [*out, Finding("error", "VQ100", str(exc))]
    if not keyring.can_sign:
        out.append(
            Finding(
                "warning",
                "VQ103",
                "verify-only keyring: this process can run jobs but not enqueue them",
            )
        )
    return out


def has_revoked_keys(app: App) -> bool:
    """Whether the app's keyring revokes any key; False when it has no keyring (that is
    reported on its own, and without keys nothing can be queued under a revoked one)."""
    try:
        return bool(app.keyring.revoked_ids)
    except VaultqError:
        return False


async def revoked_backlog(app: App, queues: list[str], *, limit: int = 10_000) -> list[Finding]:
    """VQ104: jobs still queued under a key the keyring has revoked (``docs/keys.md``).

    Reads up to ``limit`` entries per queue without leasing them. Their headers are not
    authenticated, so this is a report, never a decision: workers refuse such jobs anyway
    (dead letter ``rejected:revoked_key``)."""
    keyring = app.keyring
    if not keyring.revoked_ids:
        return []
    broker = await app.broker()
    found = []
    for queue in queues:
        entries = await broker.queued(queue, limit=limit)
        hits: set[str] = set()
        count = 0
        for entry in entries:
            try:
                header = peek_header(entry.envelope, max_size=app.max_envelope_size)
            except EnvelopeError:
                continue  # not ours to judge here: workers dead-letter junk
            named = {k for k in (header.key_id, header.signer_id) if keyring.is_revoked(k)}
            if named:
                count += 1
                hits |= named
        if count:
            scanned = f" (of the first {limit} entries)" if len(entries) >= limit else ""
            found.append(
                Finding(
                    "warning",
                    "VQ104",
                    f"{count} job(s) queued on {queue!r}{scanned} are sealed or signed with "
                    f"revoked key(s) {', '.join(sorted(hits))}; workers dead-letter them "
                    "(reason rejected:revoked_key): enqueue the honest ones again from the "
                    "producer (docs/security.md, incident response)",
                )
            )
    return found


async def clock_findings(app: App) -> list[Finding]:
    """VQ204: this host's clock against the broker's (one ``TIME`` round trip).

    Workers schedule on the broker's clock, but a producer seals its own time into every
    job: off by more than ``clock_skew`` and its jobs wait (ahead) or expire early
    (behind); off by more than half of it is worth fixing before it gets there."""
    broker = await app.broker()
    offset = await app.clock.measure(broker)
    skew = app.clock_skew
    if abs(offset) <= skew / 2:
        return []
    how = describe_offset(offset)
    if abs(offset) > skew:
        return [
            Finding(
                "error",
                "VQ204",
                f"this host's clock is {how} the broker's, more than clock_skew={skew:g} s: "
                "jobs enqueued here wait until the workers' clock catches up (ahead) or "
                "expire early (behind); fix the clock (NTP) or raise clock_skew",
            )
        ]
    return [
        Finding(
            "warning",
            "VQ204",
            f"this host's clock is {how} the broker's (more than half of clock_skew="
            f"{skew:g} s); fix the clock (NTP) before jobs are refused",
        )
    ]


def _broker(app: App, deploy: bool) -> list[Finding]:
    url = app.broker_url
    parts = urlsplit(url)
    if not app.broker_capabilities.durable:
        # Fine inside one process (tests); a deployment loses every job with it.
        return [
            Finding(
                "error" if deploy else "warning",
                "VQ205",
                f"the {parts.scheme}:// broker keeps jobs in this process only: they are lost "
                "when it exits and no other process (a `vaultq worker`) sees them; use "
                "sqlite:/// for one host or redis:// for several",
            )
        ]
    if not app.broker_capabilities.shared:
        if deploy:
            return [
                Finding(
                    "warning",
                    "VQ201",
                    f"the {parts.scheme}:// broker serves one host (it is not shared); "
                    "use Redis for several",
                )
            ]
        return []
    if not deploy:
        return []
    off_host = plaintext_off_host(url)
    if off_host:
        off = ", ".join(off_host)
        tls = parts.scheme.replace("redis", "rediss", 1)
        return [
            Finding(
                "error",
                "VQ202",
                f"plaintext {parts.scheme}:// to {off}: use {tls}:// (TLS) off this host; "
                "envelopes are sealed, but credentials and metadata are not",
            )
        ]
    if parts.scheme in _PLAINTEXT | _TLS and parts.password is None:
        return [Finding("warning", "VQ203", "the Redis URL has no password/ACL user; set one")]
    return []


_PLAINTEXT = frozenset({"redis", "redis+cluster", "redis+sentinel"})
_TLS = frozenset({"rediss", "rediss+cluster", "rediss+sentinel"})


def plaintext_off_host(url: str) -> list[str]:
    """The hosts a plaintext Redis URL (``redis://``, ``redis+cluster://``,
    ``redis+sentinel://``) reaches off this machine; empty for TLS, loopback or others."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in _PLAINTEXT:
        return []
    return [h for h in _hosts(parts.netloc) if not _loopback(h)]


def _hosts(netloc: str) -> list[str]:
    """Host names of a possibly multi-host netloc (``user:pw@h1:p1,h2:p2``)."""
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host = part.rsplit(":", 1)[0] if part.count(":") == 1 or "]" in part else part
        hosts.append(host.strip("[]"))
    return [h for h in hosts if h]


def _policies(app: App) -> list[Finding]:
    out: list[Finding] = []
    for name, task in sorted(app.tasks.items()):
        if task.policy is None:
            default = "allow_all" if isinstance(app.default_policy, AllowAll) else "the default"
            out.append(
                Finding(
                    "warning",
                    "VQ401",
                    f"task {name} has no explicit policy and relies on {default}",
                )
            )
    return out


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
