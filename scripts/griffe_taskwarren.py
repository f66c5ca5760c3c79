"""Griffe extensions for taskwarren's API reference.

``FunctionsOverSubmodules`` documents ``taskwarren.task`` the function, not the module:
``taskwarren/__init__.py`` defines ``task()``, which shadows the submodule
``taskwarren.task`` at run time. Griffe keeps one member per name and always gives it to
the submodule (a known limitation of its data model), so the API reference would lack
``task``. Once the package is loaded, this resolves the package's aliases (``Task`` and
the others point into the submodule) and then hands the name to the function, as
Python does.

``SphinxRoles`` renders the Sphinx roles the docstrings use (``:class:`Warren```,
``:meth:`~taskwarren.Warren.task```) as code that links to the name where the reference
documents it, and as plain code where it does not; mkdocstrings would show them raw.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE_RE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)(\(\))?`")

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
                if isinstance(member, griffe.Alias) and member.target_path.startswith(inside):
                    member.resolve_target()
            pkg.members[name] = func


class SphinxRoles(griffe.Extension):
    """Turn ``:role:`target``` in docstrings into optional cross-references."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the roles of one object's docstring."""
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _ROLE_RE.sub(_reference, obj.docstring.value)


def _reference(match: re.Match[str]) -> str:
    short, target, call = match[1], match[2], match[3] or ""
    title = target.rsplit(".", 1)[-1] if short else target
    path = target if target.startswith("taskwarren") else f"taskwarren.{target}"
    # An optional autoref: a link where the name is documented, plain code elsewhere,
    # and no warning either way (the build is strict).
    return f'<autoref identifier="{path}" optional><code>{title}{call}</code></autoref>'
