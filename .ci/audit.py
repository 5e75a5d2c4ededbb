"""Vulnerability audit of the hashed locks with pip-audit, honest about being offline.

    .venv/bin/python .ci/audit.py requirements/dev.txt requirements/runtime.txt

pip-audit asks a vulnerability service (PyPI's JSON API, or OSV) about every pinned
release. Where neither answers (an offline CI box, a registry proxy that serves only the
package index), pip-audit would print "No known vulnerabilities found" about nothing at
all. This script never lets that pass silently:

- exit 0 and print ``pip-audit: SKIPPED: vulnerability service unreachable`` when no
  service answers a probe, or when pip-audit could audit none of the pinned releases;
- exit 0 and list what was not audited when some releases could not be looked up;
- exit 1 when a pinned release has a known vulnerability (refresh the lock: see
  requirements/refresh.sh), or when pip-audit fails for another reason.

The probes use a short timeout so an offline run costs seconds. Their addresses can be
overridden (``VAULTQ_AUDIT_PYPI_PROBE``, ``VAULTQ_AUDIT_OSV_PROBE``) for the test that
shows the SKIPPED path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT = float(os.environ.get("VAULTQ_AUDIT_TIMEOUT", "8"))
PYPI_PROBE = os.environ.get("VAULTQ_AUDIT_PYPI_PROBE", "https://pypi.org/pypi/msgspec/0.23.0/json")
OSV_PROBE = os.environ.get("VAULTQ_AUDIT_OSV_PROBE", "https://api.osv.dev/v1/query")
OSV_QUERY = b'{"package": {"name": "msgspec", "ecosystem": "PyPI"}, "version": "0.23.0"}'


def _answers(url: str, body: bytes | None = None) -> bool:
    if not url.startswith(("https://", "http://")):
        return False
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")  # noqa: S310
    if body:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _service() -> str | None:
    if _answers(PYPI_PROBE):
        return "pypi"
    if _answers(OSV_PROBE, OSV_QUERY):
        return "osv"
    return None


def _skipped(reason: str) -> int:
    print(f"pip-audit: SKIPPED: vulnerability service unreachable ({reason})")
    return 0


def _describe(vuln: dict[str, object]) -> str:
    fixes = vuln.get("fix_versions") or []
    fixed = f" (fixed in {', '.join(map(str, fixes))})" if isinstance(fixes, list) and fixes else ""
    return f"{vuln['id']}{fixed}"


def main(locks: list[str]) -> int:
    pip_audit = shutil.which("pip-audit", path=str(Path(sys.executable).parent))
    if pip_audit is None:
        print("pip-audit is not installed in this venv (it is in vaultq[dev])", file=sys.stderr)
        return 1
    service = _service()
    if service is None:
        return _skipped(f"neither PyPI's JSON API nor OSV answered a probe within {TIMEOUT:g} s")
    command = [pip_audit, "--disable-pip", "--require-hashes", "--progress-spinner", "off"]
    command += ["--vulnerability-service", service, "--timeout", str(int(TIMEOUT) + 7)]
    command += ["--format", "json"]
    for lock in locks:
        command += ["-r", lock]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
        if "connect" in tail.lower() or "timed out" in tail.lower():
            return _skipped(tail)
        print(f"pip-audit failed (exit {run.returncode}): {tail}", file=sys.stderr)
        return 1
    deps = report.get("dependencies", [])
    not_audited = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    if deps and len(not_audited) == len(deps):
        return _skipped(f"{service} knew none of the {len(deps)} pinned releases")
    for dep in vulnerable:
        ids = ", ".join(_describe(v) for v in dep["vulns"])
        print(f"pip-audit: VULNERABLE: {dep['name']} {dep['version']}: {ids}")
    if not_audited:
        names = ", ".join(f"{d['name']} {d.get('version', '?')}" for d in not_audited)
        print(f"pip-audit: NOT AUDITED ({len(not_audited)} of {len(deps)}): {names}")
    if vulnerable:
        print("pip-audit: FAILED: refresh the lock: requirements/refresh.sh --upgrade-package NAME")
        return 1
    audited = len(deps) - len(not_audited)
    print(f"pip-audit: OK: {audited} pinned releases audited against {service}, none vulnerable")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["requirements/dev.txt", "requirements/runtime.txt"]))
