"""Every module's ``__all__`` names exactly what it defines, and the package exports work."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vaultq

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(vaultq.__path__, "vaultq.")
    if not m.name.startswith("vaultq.django") and m.name != "vaultq.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", ()):
        assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which is missing"


def test_top_level_names() -> None:
    for name in ("App", "Principal", "Secret", "Keyring", "require_permission", "current_job"):
        assert name in vaultq.__all__
    assert issubclass(vaultq.JobDenied, vaultq.JobError)
    assert issubclass(vaultq.JobError, vaultq.VaultqError)
    assert issubclass(vaultq.BadSignature, vaultq.EnvelopeError)
