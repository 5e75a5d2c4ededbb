"""The layering rules that no linter checks for us: no private name used across modules,
no module over 600 lines, and the import contracts of ``.importlinter`` (run here too, so a
broken contract fails the tests and not only ``.ci/test.sh``).

When two modules need a thing, it earns a public name in the module that owns it
(STYLE.md, "Grow out of"). The checks read the source (``ast``): nothing is imported.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vaultq"
MAX_LINES = 600

# Empty: every module is within MAX_LINES. Split a module along a real seam instead of
# adding it here.
TEMPORARY_OVERSIZE_ALLOWED: set[str] = set()

FOREIGN_PRIVATE_ATTRIBUTES = {
    # Underscored names that are other libraries' public API, not vaultq's privates.
    "_exit",  # os._exit: a forked child leaves without running the parent's cleanup
    "_default_manager",  # Django's documented way to reach a model's manager
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _names_defined_in(tree: ast.Module) -> set[str]:
    """Every name a module binds itself: defs, classes, assignment targets (including
    ``self._x = ...``) and string constants (``__slots__`` entries)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found


def _own_object(node: ast.expr) -> bool:
    """``self._x``, ``cls._x`` and ``super()._x`` reach into the class's own state."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def private_reach_ins(source: str, where: str) -> list[str]:
    """Uses of another module's private names in ``source``: ``from vaultq.x import _y``,
    and ``obj._y`` where this module defines no ``_y`` of its own (so ``_y`` can only
    come from another module's object)."""
    tree = ast.parse(source)
    own = _names_defined_in(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module == "vaultq" or module.startswith("vaultq."):
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{where}:{node.lineno}: imports {alias.name} from {module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if _own_object(node.value) or node.attr in own:
                continue
            if node.attr in FOREIGN_PRIVATE_ATTRIBUTES:
                continue
            found.append(f"{where}:{node.lineno}: uses {ast.unparse(node)}")
    return found


def test_no_private_name_is_used_across_modules() -> None:
    found: list[str] = []
    for path in _modules():
        found += private_reach_ins(path.read_text(encoding="utf-8"), _rel(path))
    assert not found, (
        "private names used across modules (give them a public name in the module that "
        "owns them):\n" + "\n".join(found)
    )


def test_the_reach_in_check_sees_both_forms() -> None:
    # The check above passes on an empty list, so show that it finds what it looks for.
    source = (
        "from vaultq.policy import _safe_id\n"
        "def f(app):\n"
        "    return app._defaults, _safe_id('x')\n"
        "class C:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def g(self, other):\n"
        "        return self._mine, other._mine, super()._base\n"
    )
    found = private_reach_ins(source, "m.py")
    assert found == ["m.py:1: imports _safe_id from vaultq.policy", "m.py:3: uses app._defaults"]


def test_no_module_is_over_600_lines() -> None:
    sizes = {_rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()}
    over = {
        rel: n
        for rel, n in sizes.items()
        if n > MAX_LINES and rel not in TEMPORARY_OVERSIZE_ALLOWED
    }
    assert not over, f"modules over {MAX_LINES} lines (split them along a real seam): {over}"


def test_the_temporary_allow_list_names_real_files() -> None:
    # A file split below the limit, or gone, leaves the list: it only ever shrinks.
    for rel in TEMPORARY_OVERSIZE_ALLOWED:
        path = ROOT / rel
        assert path.exists(), f"{rel} is gone: remove it from TEMPORARY_OVERSIZE_ALLOWED"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines > MAX_LINES, (
            f"{rel} is {lines} lines now: remove it from TEMPORARY_OVERSIZE_ALLOWED"
        )


def test_import_contracts_hold() -> None:
    """``.importlinter``: the core never imports the Django integration or the CLI, and
    the brokers never import the envelope or payload code."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)")
    done = subprocess.run(
        [lint, "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_is_on_one_side_of_the_core_contract() -> None:
    """A new top-level module must be placed: in the core (may not import the edges) or
    among the edges (CLI, Django). Otherwise the contract would silently skip it."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter", encoding="utf-8")
    contract = config["importlinter:contract:core-below-edges"]
    core = set(contract["source_modules"].split())
    edges = {m for m in contract["forbidden_modules"].split() if m.startswith("vaultq")}
    assert not core & edges, f"in both lists: {sorted(core & edges)}"
    top_level = {
        f"vaultq.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    unplaced = top_level - core - edges
    assert not unplaced, f"add these to .importlinter's core-below-edges contract: {unplaced}"
    stale = (core | edges) - top_level
    assert not stale, f".importlinter names modules that do not exist: {stale}"
