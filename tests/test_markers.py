"""The quick subset (`pytest -m "not slow"`): every test conftest.py calls slow exists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def slow_tests() -> frozenset[tuple[str, str]]:
    # by path: `import conftest` is ambiguous next to tests/django/conftest.py
    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SLOW_TESTS":
            return frozenset(ast.literal_eval(node.value.args[0]))  # type: ignore[attr-defined]
    raise AssertionError("SLOW_TESTS not found in tests/conftest.py")


def test_every_listed_slow_test_exists_and_is_marked() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "-m", "slow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    collected = {
        (Path(line.split("::")[0]).name, line.split("::")[1].split("[")[0])
        for line in out.stdout.splitlines()
        if "::" in line
    }
    listed = slow_tests()
    assert len(listed) >= 10
    missing = listed - collected
    assert not missing, f"renamed or removed: update SLOW_TESTS in tests/conftest.py: {missing}"
