"""The README tells the truth: its commands, its example and its links work.

- the run command (``<!-- command: run -->``) is executed exactly as written, with
  ``bash -c``, in a fresh copy of the repository's files (no ``.venv``, no caches), so it
  creates its own virtualenv and installs from the package index (slow: ~1 min);
- the test command (``<!-- command: test -->``) is what ``.ci/run`` runs;
- the first-app example (``<!-- example: ... -->`` blocks) runs against a real worker;
- every relative link in the README and the docs this suite owns points to a file;
- the CLI table names every command ``vaultq --help`` lists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaultq.demo import EXPECTED

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(r"<!-- (command|example): ([^>]+?) -->\s*\n```[a-z]*\n(.*?)\n```", re.S)


def _blocks(kind: str) -> dict[str, str]:
    return {name.strip(): body for k, name, body in _BLOCK.findall(README.read_text()) if k == kind}


def _command(name: str) -> str:
    commands = _blocks("command")
    assert name in commands, f"README has no '<!-- command: {name} -->' block"
    text = commands[name].strip()
    assert "\n" not in text, f"the {name} command must be one line"
    return text


def _clean_env() -> dict[str, str]:
    # What a newcomer's shell has: no vaultq settings, no virtualenv of ours on PATH.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULTQ_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def _copy_repository(dest: Path) -> None:
    """Copy the working tree's files (tracked, plus untracked not ignored) to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    count = 0
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    assert count > 20 and (dest / "pyproject.toml").exists()
    assert not (dest / ".venv").exists()


# -- the two commands ------------------------------------------------------------------------


@pytest.mark.slow
def test_run_command_works_in_a_clean_copy(tmp_path: Path) -> None:
    command = _command("run")
    repo = tmp_path / "vaultq"
    _copy_repository(repo)
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=repo,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}\n{out}\n{proc.stderr}"
    assert re.search(r"^job +task +principal +status +tries +time +result or reason$", out, re.M)
    for label, status in EXPECTED.items():
        assert re.search(rf"^{re.escape(label)} .*  {re.escape(status)}  ", out, re.M), (
            label,
            out,
        )
    assert "every job ended as expected" in out
    # the command made its own virtualenv, and the demo left nothing in the checkout
    assert (repo / ".venv" / "bin" / "vaultq").exists()
    assert not (repo / "vaultq.db").exists()


def test_test_command_is_what_ci_runs() -> None:
    command = _command("test")
    assert command == "bash .ci/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == f"exec {command}", ".ci/run must end by exec'ing the README's test command"
    assert (ROOT / ".ci" / "test.sh").exists()


def test_run_command_installs_and_runs_the_demo() -> None:
    # The cheap half of the slow test: the command is the one the demo test exercises.
    command = _command("run")
    assert command.startswith("python3 -m venv .venv && ")
    assert command.endswith(".venv/bin/vaultq demo")
    assert "/pip install " in command


# -- the first-app example ---------------------------------------------------------------------


def test_first_app_example_runs_against_a_worker(tmp_path: Path) -> None:
    examples = _blocks("example")
    assert set(examples) == {"shop.py", "producer"}
    (tmp_path / "shop.py").write_text(examples["shop.py"] + "\n")
    (tmp_path / "producer.py").write_text(examples["producer"] + "\n")
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "vaultq", "worker", "shop"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        proc = subprocess.run(
            [sys.executable, "producer.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip() == "Receipt(order_id=7, refunded_cents=1999)"
        # and the README's claim about a principal without the permission
        denied = subprocess.run(
            [
                sys.executable,
                "-c",
                "import vaultq\n"
                "from shop import Refund, refund\n"
                "try:\n"
                "    refund.enqueue_sync(Refund(1, 1, vaultq.Secret('t')),"
                " principal=vaultq.Principal('user:1'))\n"
                "except vaultq.AuthorizationDenied:\n"
                "    print('denied')\n",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert denied.stdout.strip() == "denied", denied.stdout + denied.stderr
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert oct((tmp_path / "vaultq.keys").stat().st_mode & 0o777) == "0o600"
    assert "app=shop broker=sqlite:///vaultq.db" in (tmp_path / "worker.log").read_text()


# -- links and the CLI table ---------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_OWN_DOCS = [
    "docs/index.md",
    "docs/getting-started.md",
    "docs/security.md",
    "docs/configuration.md",
]


@pytest.mark.parametrize("doc", ["README.md", *_OWN_DOCS])
def test_relative_links_point_to_files(doc: str) -> None:
    path = ROOT / doc
    assert path.exists(), f"{doc} is missing"
    missing = []
    for target in _LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{doc} links to missing files: {missing}"


def test_cli_table_lists_every_command() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "vaultq", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    section = help_text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    commands = re.findall(r"^    (\w+) ", section, re.M)
    assert "worker" in commands and "demo" in commands
    readme = README.read_text()
    for command in commands:
        assert f"`vaultq {command}" in readme, f"README's CLI table misses `vaultq {command}`"
