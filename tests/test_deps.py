"""vaultq.deps: the safe minimums `vaultq check` holds installed dependencies to."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import vaultq
from vaultq import deps
from vaultq.checks import check_app
from vaultq.cli import main
from vaultq.deps import SAFE_MINIMUMS, SafeMinimum, dependency_report, version_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("44.0.0", "44.0.1"),
        ("43.0.3", "44.0.1"),
        ("44.0.1rc1", "44.0.1"),
        ("44.0.1.dev3", "44.0.1"),
        ("4.4", "4.16.0"),
        ("0.18.5", "0.18.6"),
        ("0.9.9", "0.18.6"),
        ("nonsense", "0.0.1"),
    ],
)
def test_version_key_orders_like_pep440(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)
    assert Version(older if older != "nonsense" else "0") < Version(newer)


@pytest.mark.parametrize(("a", "b"), [("5.0", "5.0.0"), ("v44.0.1", "44.0.1")])
def test_version_key_equal_releases(a: str, b: str) -> None:
    assert version_key(a) == version_key(b)


def test_every_runtime_dependency_has_a_documented_minimum() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(d).name for d in project["dependencies"]}
    table = {m.package: m for m in SAFE_MINIMUMS}
    assert runtime <= set(table), "add the new dependency to vaultq.deps.SAFE_MINIMUMS"
    for req in map(Requirement, project["dependencies"]):
        # the safe minimum is at or above the range pyproject.toml allows
        floor = next(s.version for s in req.specifier if s.operator == ">=")
        assert Version(table[req.name].minimum) >= Version(floor)
    for minimum in SAFE_MINIMUMS:
        assert "CVE-" in minimum.reason or "no published advisory" in minimum.reason


def test_the_locked_versions_meet_every_safe_minimum() -> None:
    for row in dependency_report():
        assert row.ok, str(row)


def test_report_reads_installed_versions_and_flags_old_ones() -> None:
    crypto = metadata.version("cryptography")
    rows = dependency_report(
        (
            SafeMinimum("cryptography", "9999.0", "CVE-0000-0001 (test)"),
            SafeMinimum("cryptography", crypto, "exactly the installed release"),
            SafeMinimum("vaultq-no-such-package", "1.0", "absent and optional", optional=True),
            SafeMinimum("vaultq-no-such-required", "1.0", "absent and required"),
        )
    )
    assert [(r.installed, r.ok) for r in rows] == [
        (crypto, False),
        (crypto, True),
        (None, True),
        (None, False),
    ]
    assert str(rows[0]) == f"cryptography {crypto} (safe minimum 9999.0: BELOW the safe minimum)"


def test_check_warns_about_a_dependency_below_its_safe_minimum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = vaultq.App("deps", broker=f"sqlite:///{tmp_path}/q.db", keyring=vaultq.Keyring.generate())
    assert not [f for f in check_app(app) if f.code == "VQ501"]
    raised = (*SAFE_MINIMUMS, SafeMinimum("msgspec", "9999.1", "CVE-0000-0002 (test)"))
    monkeypatch.setattr(deps, "SAFE_MINIMUMS", raised)
    found = [f for f in check_app(app) if f.code == "VQ501"]
    assert len(found) == 1
    assert found[0].level == "warning"
    assert found[0].message.startswith(
        f"msgspec {metadata.version('msgspec')} is older than 9999.1"
    )
    assert "CVE-0000-0002" in found[0].message

    # the CLI prints every dependency's version and verdict, then the finding
    monkeypatch.setenv("VAULTQ_BROKER", f"sqlite:///{tmp_path}/q.db")
    monkeypatch.setenv("VAULTQ_KEYS", vaultq.Keyring.generate().to_json())
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    assert main(["check", "cli_apps"]) == 0  # a warning does not fail the check
    out = capsys.readouterr().out
    assert f"cryptography {metadata.version('cryptography')} (>= 44.0.1 ok)" in out
    assert "msgspec" in out and "(>= 9999.1 BELOW)" in out
    assert "WARNING VQ501: msgspec" in out
