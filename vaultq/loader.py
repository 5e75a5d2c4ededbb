"""Find the user's ``App`` from a ``module[:attr]`` spec given on the command line.

This is the only place vaultq imports by name, and the name always comes from the
operator (CLI argument or settings), never from a message.

A module that needs setting up before its App exists (a framework integration) says so
itself: when the imported module defines ``vaultq_load_app(attr) -> App``, that hook
builds the App (``vaultq.django`` runs ``django.setup()`` there). The core never imports
a framework; the framework registers how it is loaded.
"""

from __future__ import annotations

import importlib
import os
import sys

from vaultq.app import App
from vaultq.errors import ConfigurationError

__all__ = ["LOAD_HOOK", "load_app"]

LOAD_HOOK = "vaultq_load_app"
"""The module-level function a module defines to build its App itself (see above)."""


def load_app(spec: str) -> App:
    """Import ``module`` (the working directory is on ``sys.path``, as for ``python -m``)
    and return ``module.attr``, or the single ``App`` the module defines."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigurationError("give the module that defines your App, e.g. `myapp.jobs`")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself (or a package on its path) is missing, versus a module it
        # imports: `shop_jobs` importing a missing `shop` is a dependency problem.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import {module_name!r}: no such module. Run from the directory "
                "that contains it, or put it on PYTHONPATH"
            ) from exc
        if not exc.name:
            raise
        raise ConfigurationError(
            f"cannot import {module_name!r}: it imports {exc.name!r}, which is not installed "
            "here. Install it in this environment (or fix the import), then start again"
        ) from exc
    hook = getattr(module, LOAD_HOOK, None)
    if callable(hook):
        loaded = hook(attr)
        if not isinstance(loaded, App):
            raise ConfigurationError(f"{module_name}.{LOAD_HOOK}() did not return a vaultq.App")
        return loaded
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, App):
            raise ConfigurationError(f"{module_name}:{attr} is not a vaultq.App")
    else:
        found = {name: v for name, v in vars(module).items() if isinstance(v, App)}
        unique = {id(v): (name, v) for name, v in found.items()}
        if not unique:
            raise ConfigurationError(
                f"module {module_name!r} defines no vaultq.App; point at one with "
                f"`{module_name}:name`"
            )
        if len(unique) > 1:
            names = ", ".join(sorted(f"{module_name}:{n}" for n, _ in unique.values()))
            raise ConfigurationError(f"module {module_name!r} has several Apps; pick one: {names}")
        attr, app = next(iter(unique.values()))
    app.import_spec = f"{module_name}:{attr}"
    return app
