"""The dependency versions vaultq declares safe, and what is installed.

``pyproject.toml`` keeps wide ranges (vaultq is a library, installed beside other code);
this table is the stricter floor below which ``vaultq check`` warns, each entry with the
advisory or fix it answers. It is a warning, not a refusal: a distribution's own build
(e.g. a cryptography linked against a patched system OpenSSL) may carry the fix under an
older version number. Keep the table to advisories that touch what vaultq or its
deployments use; ``pip-audit`` (run by ``.ci/test.sh``) covers the rest of the tree.

Versions are compared by their release numbers (``44.0.1``); a pre-release or dev
release (``44.0.1rc1``) counts as older than its release. No ``packaging`` import:
this runs in production installs that have only vaultq's runtime dependencies.
"""

from __future__ import annotations

import re
from importlib import metadata

import msgspec

__all__ = [
    "SAFE_MINIMUMS",
    "DependencyStatus",
    "SafeMinimum",
    "dependency_report",
    "dependency_summary",
    "version_key",
]


class SafeMinimum(msgspec.Struct, frozen=True):
    """The oldest release of ``package`` vaultq considers safe, and why."""

    package: str
    minimum: str
    reason: str
    optional: bool = False
    """Only checked when installed (an extra, such as ``vaultq[django]``)."""


SAFE_MINIMUMS: tuple[SafeMinimum, ...] = (
    SafeMinimum(
        "cryptography",
        "44.0.1",
        "wheels of 42.0.0-44.0.0 bundle an OpenSSL affected by CVE-2024-12797 "
        "(fixed in 44.0.1), and those before 43.0.1 one affected by CVE-2024-6119",
    ),
    SafeMinimum(
        "redis",
        "5.0.0",
        "above 4.5.4, which fixed CVE-2023-28858/CVE-2023-28859 (a cancelled async "
        "command could leave its reply for the next one); 5.0 is vaultq's tested floor",
    ),
    SafeMinimum(
        "msgspec",
        "0.18.6",
        "no published advisory; vaultq's tested floor (payload error wordings are "
        "tested from 0.18.6 to 0.23)",
    ),
    SafeMinimum("anyio", "4.4", "no published advisory; vaultq's tested floor"),
    SafeMinimum(
        "django",
        "5.2.8",
        "CVE-2025-64459 (SQL injection through the _connector argument of Q and "
        "QuerySet filters) and CVE-2025-64458, fixed in 5.2.8",
        optional=True,
    ),
)


class DependencyStatus(msgspec.Struct, frozen=True):
    """One row of the report: ``installed`` is ``None`` when the package is absent."""

    package: str
    installed: str | None
    minimum: str
    reason: str
    optional: bool

    @property
    def ok(self) -> bool:
        if self.installed is None:
            return self.optional
        return version_key(self.installed) >= version_key(self.minimum)

    def __str__(self) -> str:
        if self.installed is None:
            return f"{self.package} not installed" + (" (optional)" if self.optional else "")
        verdict = "ok" if self.ok else "BELOW the safe minimum"
        return f"{self.package} {self.installed} (safe minimum {self.minimum}: {verdict})"


_RELEASE = re.compile(r"(\d+(?:\.\d+)*)(.*)")
_PRE = re.compile(r"[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)", re.IGNORECASE)


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """Sort key: release numbers (trailing zeros dropped), then 0 for a pre/dev release
    and 1 for a final or post release. Unparseable versions sort lowest."""
    match = _RELEASE.match(version.strip().lstrip("vV"))
    if match is None:
        return ((), 0)
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    final = 0 if _PRE.match(match.group(2)) else 1
    return (tuple(release), final)


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def dependency_report(minimums: tuple[SafeMinimum, ...] | None = None) -> list[DependencyStatus]:
    """Installed version of each dependency in ``minimums`` (default: ``SAFE_MINIMUMS``)
    against its safe minimum."""
    return [
        DependencyStatus(m.package, _installed(m.package), m.minimum, m.reason, m.optional)
        for m in (SAFE_MINIMUMS if minimums is None else minimums)
    ]


def dependency_summary(report: list[DependencyStatus] | None = None) -> str:
    """One line for ``vaultq check``: each dependency's installed version and verdict."""
    rows = dependency_report() if report is None else report
    parts = []
    for row in rows:
        if row.installed is None:
            if not row.optional:
                parts.append(f"{row.package} MISSING")
            continue
        verdict = "ok" if row.ok else "BELOW"
        parts.append(f"{row.package} {row.installed} (>= {row.minimum} {verdict})")
    return "dependencies: " + ", ".join(parts)
