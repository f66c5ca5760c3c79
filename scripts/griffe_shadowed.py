"""A Griffe extension: document ``taskwarren.task`` the function, not the module.

``taskwarren/__init__.py`` defines ``task()``, which shadows the submodule
``taskwarren.task`` at run time. Griffe keeps one member per name and always gives it to
the submodule (a known limitation of its data model), so the API reference would lack
``task``. Once the package is loaded, this resolves the package's aliases (``Task`` and
the others point into the submodule) and then hands the name to the function, as
Python does.
"""

from __future__ import annotations

from typing import Any

import griffe

#: Functions of a package's ``__init__`` that share their name with a submodule.
SHADOWING = {"taskwarren": ("task",)}


class FunctionsOverSubmodules(griffe.Extension):
    """Give a shadowed name to the function defined in the package, as Python does."""

    def __init__(self) -> None:
        self._functions: dict[str, griffe.Function] = {}

    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        """Remember each function defined in a package that shadows a submodule."""
        parent = func.parent
        if parent is not None and func.name in SHADOWING.get(parent.path, ()):
            self._functions[func.path] = func

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Resolve the aliases into the submodules, then put the functions in place."""
        for name in SHADOWING.get(pkg.path, ()):
            func = self._functions.get(f"{pkg.path}.{name}")
            if func is None:
                continue
            inside = f"{pkg.path}.{name}."
            for member in pkg.members.values():
                if member.is_alias and member.target_path.startswith(inside):
                    member.resolve_target()
            pkg.members[name] = func
