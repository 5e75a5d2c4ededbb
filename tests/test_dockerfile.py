"""The Dockerfile (no Docker engine here): what it pins and references exists, and the
hadolint gate of .ci/test.sh fails on warnings."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaultq.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def values(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


def test_base_image_is_pinned_by_patch_version() -> None:
    (base,) = values("FROM")
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim-[a-z]+", base), base


def test_every_copied_path_exists_and_is_not_dockerignored() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for args in values("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(Path(source).match(pattern) for pattern in ignored), source


def test_installs_come_from_the_hashed_runtime_lock() -> None:
    runs = " ".join(values("RUN"))
    assert "pip install --no-cache-dir --require-hashes -r requirements/runtime.txt" in runs
    # vaultq itself adds nothing unpinned: no dependencies, no isolated build downloads.
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in runs
    assert re.search(r"pip install(?![^&]*(--require-hashes|--no-deps))", runs) is None
    lock = (ROOT / "requirements" / "runtime.txt").read_text()
    assert "--hash=sha256:" in lock
    assert re.search(r"^setuptools==", lock, re.M), "the build backend must be in the lock"


def test_runs_as_numeric_user_with_sigterm_and_a_real_healthcheck() -> None:
    assert values("USER") == ["10001:10001"]
    assert values("STOPSIGNAL") == ["SIGTERM"]
    (check,) = values("HEALTHCHECK")
    cmd = check.split("CMD", 1)[1].strip()
    assert cmd == '["vaultq", "health"]'
    # `vaultq health` is a real command whose defaults need no flags
    args = build_parser().parse_args(["health"])
    assert args.command == "health"
    assert args.health_file is None
    assert values("ENTRYPOINT") == ['["vaultq"]']


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: it comes with requirements/dev.txt")
    return found


def test_hadolint_passes_on_the_dockerfile_and_fails_on_warnings(tmp_path: Path) -> None:
    hadolint = _hadolint()
    ok = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the gate is real: an unpinned base image is a warning (DL3006/DL3007) and fails it
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.replace(values("FROM")[0], "python:latest"))
    fail = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fail.returncode != 0
    assert "DL3007" in fail.stdout
