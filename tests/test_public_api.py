"""Every module's ``__all__`` names exactly what it defines, checked both ways (like
anyio's tests/test_all_attributes.py), and every top-level name is documented."""

from __future__ import annotations
import __future__

import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest

import vaultq

ROOT = Path(__file__).resolve().parent.parent

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(vaultq.__path__, "vaultq.")
    # The Django side needs configured settings to import; tests/django covers it.
    if not m.name.startswith(("vaultq.django", "vaultq.testing.django"))
    and m.name != "vaultq.__main__"
)


# Modules of an optional extra: skipped, saying so, only in the leg without extras
# (tests/conftest.py stops the main leg when an extra is missing).
EXTRA_OF = {
    "vaultq.metrics": ("prometheus_client", "metrics"),
    "vaultq.metrics_counts": ("prometheus_client", "metrics"),
    "vaultq.metrics_shared": ("prometheus_client", "metrics"),
    "vaultq.tracing": ("opentelemetry", "otel"),
}


def import_module(name: str) -> types.ModuleType:
    if name in EXTRA_OF:
        needed, extra = EXTRA_OF[name]
        pytest.importorskip(needed, reason=f"{name} needs vaultq[{extra}]")
    return importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which is missing"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_definition_is_in_all(name: str) -> None:
    """The other way: each class or function a module defines under a public name is in
    its ``__all__`` (a helper another module uses is public; one it does not is
    ``_private``)."""
    module = import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    left_out = [
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or isinstance(value, types.FunctionType))
        and getattr(value, "__module__", None) == name
        and attr not in exported
    ]
    assert not left_out, f"{name} defines {left_out} but leaves them out of __all__"


def test_every_top_level_name_is_in_all() -> None:
    """Nothing reachable as ``vaultq.X`` is public by accident: every non-underscore
    attribute of the package that is not a submodule is in ``vaultq.__all__``."""
    stray = sorted(
        attr
        for attr, value in vars(vaultq).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
        and attr not in vaultq.__all__
    )
    assert not stray, f"public at the top level but not in vaultq.__all__: {stray}"


def _api_table_names() -> set[str]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", text, re.M))


def test_every_exported_name_is_documented() -> None:
    """docs/api.md lists exactly ``vaultq.__all__``, and each exported class and function
    carries a docstring of its own (not one inherited from a base class)."""
    listed = _api_table_names()
    assert listed == set(vaultq.__all__), (
        f"docs/api.md lacks {sorted(set(vaultq.__all__) - listed)}, "
        f"lists unexported {sorted(listed - set(vaultq.__all__))}"
    )
    undocumented = []
    for attr in vaultq.__all__:
        value = getattr(vaultq, attr)
        if inspect.isclass(value):
            own = vars(value).get("__doc__")
        elif isinstance(value, types.FunctionType):
            own = value.__doc__
        else:
            continue  # constants, aliases and policy instances are described in docs/api.md
        if not (own and own.strip()):
            undocumented.append(attr)
    assert not undocumented, f"exported without a docstring: {undocumented}"


def test_top_level_names() -> None:
    for name in ("App", "Principal", "Secret", "Keyring", "require_permission", "current_job"):
        assert name in vaultq.__all__
    assert issubclass(vaultq.JobDenied, vaultq.JobError)
    assert issubclass(vaultq.JobError, vaultq.VaultqError)
    assert issubclass(vaultq.BadSignature, vaultq.EnvelopeError)
