"""Packages installed the light way for a test: a directory with a module and its
``.dist-info`` (``entry_points.txt``) put on ``sys.path``, which is all
``importlib.metadata.entry_points`` looks at."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

THIRDPARTY = Path(__file__).resolve().parent / "thirdparty"
"""The third-party broker package (scheme ``thirdparty://``), ready to put on sys.path."""


def write_package(
    root: Path, name: str, entry_points: Mapping[str, Mapping[str, str]], modules: Mapping[str, str]
) -> Path:
    """Write a package named ``name`` under ``root``: ``modules`` (module name -> source)
    and a dist-info declaring ``entry_points`` (group -> {name: "module:attr"}).
    Returns ``root`` (the directory to put on sys.path)."""
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{ep} = {target}" for ep, target in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    return root


@contextmanager
def installed(*roots: Path) -> Iterator[None]:
    """``roots`` on sys.path (first) for the block: their dist-infos are installed
    packages to importlib.metadata, their modules importable."""
    before = list(sys.path)
    modules_before = set(sys.modules)
    sys.path[:0] = [str(r) for r in roots]
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = before
        for name in set(sys.modules) - modules_before:
            module = sys.modules.get(name)
            where = str(getattr(module, "__file__", "") or "")
            if any(where.startswith(str(r)) for r in roots):
                del sys.modules[name]
        importlib.invalidate_caches()
