"""The hashed locks in requirements/ and the CI helpers around them (.ci/audit.py)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)(?: ; ([^\\]+?))? \\$")


def pins(lock: str) -> dict[str, list[tuple[Version, str]]]:
    """name -> [(version, marker)] for every pinned release; asserts each has hashes."""
    found: dict[str, list[tuple[Version, str]]] = {}
    lines = (ROOT / "requirements" / lock).read_text().splitlines()
    for i, line in enumerate(lines):
        match = PIN.match(line)
        if match is None:
            assert not re.match(r"^[A-Za-z0-9]", line), f"{lock}: unpinned line {line!r}"
            continue
        assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{lock}: {line} has no hash"
        name = match.group(1).lower().replace("_", "-")
        found.setdefault(name, []).append((Version(match.group(2)), match.group(3) or ""))
    return found


def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"], dict)
    return data["project"]


def requirements(extra: str | None) -> list[Requirement]:
    meta = project()
    deps = meta["dependencies"] if extra is None else meta["optional-dependencies"][extra]  # type: ignore[index]
    return [Requirement(d) for d in deps]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("runtime.txt", [None, "fast"]), ("dev.txt", [None, "django", "dev", "fast"])],
)
def test_each_lock_pins_every_declared_dependency_inside_its_range(
    lock: str, extras: list[str | None]
) -> None:
    locked = pins(lock)
    for extra in extras:
        for req in requirements(extra):
            if req.name == "vaultq":
                continue
            name = req.name.lower()
            assert name in locked, f"{lock} lacks {name}: run requirements/refresh.sh"
            for version, _marker in locked[name]:
                assert req.specifier.contains(version, prereleases=True), (
                    f"{lock} pins {name}=={version}, outside {req.specifier} in pyproject.toml"
                )


def test_build_backend_is_locked_and_matches_build_system() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for lock in ("runtime.txt", "dev.txt"):
        locked = pins(lock)
        for spec in build:
            req = Requirement(spec)
            assert req.name in locked, f"{lock} lacks the build backend {req.name}"
            assert all(req.specifier.contains(v) for v, _ in locked[req.name])


def test_dev_lock_serves_both_django_legs() -> None:
    django = dict((m, v) for v, m in pins("dev.txt")["django"])
    assert len(django) == 2, django
    old = next(v for m, v in django.items() if "< '3.12'" in m)
    new = next(v for m, v in django.items() if ">= '3.12'" in m)
    assert old.major == 5
    assert new.major == 6


def test_license_is_an_spdx_string() -> None:
    # setuptools >= 77 deprecates the `license = { text = ... }` table.
    assert project()["license"] == "Apache-2.0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_audit_says_skipped_out_loud_when_no_service_answers() -> None:
    port = _closed_port()
    env = dict(
        os.environ,
        VAULTQ_AUDIT_PYPI_PROBE=f"http://127.0.0.1:{port}/pypi/msgspec/json",
        VAULTQ_AUDIT_OSV_PROBE=f"http://127.0.0.1:{port}/v1/query",
        VAULTQ_AUDIT_TIMEOUT="2",
    )
    run = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "audit.py"), "requirements/runtime.txt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("pip-audit: SKIPPED: vulnerability service unreachable")


def test_dependabot_and_security_policy_are_in_place() -> None:
    import yaml  # type: ignore[import-untyped]  # no stubs in the locks; a YAML read only

    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {u["package-ecosystem"] for u in config["updates"]}
    assert {"pip", "docker"} <= ecosystems
    policy = (ROOT / "SECURITY.md").read_text()
    for needed in ("docs/security.md", "Supported versions", "Reporting a vulnerability"):
        assert needed in policy
